"""The Gradio app: the chat, its sources and the article beside it, the saved chats, the
library and the collections, laid out and wired to `Handlers`. `ui.serving` serves it."""

from typing import Any

import gradio as gr

import rag
from rag import RAG

from .handlers import Handlers
from .render import (
    ARTICLE_JS,
    ARTICLE_PLACEHOLDER,
    SOURCES_JS,
    collection_choices,
    library_choices,
    library_line,
    library_table,
    source_choices,
    sources_html,
)

# Questions about the bundled sample, samples/russia-us-rare-earths.txt.
EXAMPLES = (
    "How much aluminum could Russia sell to the United States?",
    "What did Kyiv ask for?",
    "What did Putin say about rare earth metals?",
)
UPLOAD_TYPES = [".txt", ".md", ".html", ".htm", ".pdf", ".json", ".jsonl", ".csv", ".rss", ".atom", ".xml"]
# How often an open page checks for a new index generation (a watch pass, a CLI ingest).
REFRESH_S = 15.0


def build_app(rag_: RAG) -> gr.Blocks:
    """The whole UI around one `RAG`. Launch it with `ui.serving`'s `launch()` or `serve()`,
    which add the theme, the CSS and the lock-down options that Gradio 6 takes at launch time."""
    handle = Handlers(rag_)
    s = rag_.settings

    with gr.Blocks(
        title="Chat with your articles", analytics_enabled=False, delete_cache=(3600, 3600)
    ) as demo:
        turns = gr.State([])
        shown = gr.State(None)
        # The saved chat the conversation on screen goes to (None: a new one at its first turn).
        chat_id = gr.State(None)
        gr.Markdown("## Chat with your articles")
        with gr.Row(equal_height=True):
            header = gr.Markdown(library_line(rag_))
            # The chat, the saved chats, the library and the filters all follow it.
            collection = gr.Dropdown(
                choices=collection_choices(rag_),
                value=rag_.settings.collection,
                label="Collection",
                scale=0,
                min_width=220,
                elem_id="collection",
            )
        with gr.Tabs() as tabs:
            with gr.Tab("Chat", id="chat"), gr.Row(equal_height=False):
                with gr.Column(scale=3, min_width=420):
                    chatbot = gr.Chatbot(
                        label="Chat",
                        elem_id="chat",
                        height=460,
                        buttons=["copy"],
                        feedback_options=None,
                        latex_delimiters=[],
                        placeholder="Ask about the articles in your library. Answers cite passages as [1].",
                    )
                    with gr.Row(equal_height=True):
                        question = gr.Textbox(
                            show_label=False,
                            placeholder="Ask a question about your articles…",
                            lines=1,
                            max_lines=4,
                            scale=6,
                            autofocus=True,
                            container=False,
                            elem_id="question",
                        )
                        send = gr.Button("Ask", variant="primary", scale=1, min_width=70)
                        stop_btn = gr.Button("Stop", variant="stop", scale=1, min_width=70)
                    status = gr.Markdown("", elem_id="status")
                    timings = gr.HTML("", elem_id="timings")
                    gr.Examples(
                        examples=[[q] for q in EXAMPLES],
                        inputs=[question],
                        label="Questions about the bundled sample article",
                    )
                    with gr.Row():
                        new_chat_btn = gr.Button("New chat", size="sm")
                    with gr.Accordion("Saved chats", open=False, elem_id="saved-chats"):
                        with gr.Row(equal_height=True):
                            past = gr.Dropdown(
                                choices=[],
                                value=None,
                                label="Saved chats (newest first)",
                                scale=4,
                                elem_id="past-chats",
                            )
                            open_btn = gr.Button("Open", scale=1, min_width=70, elem_id="open-chat")
                        with gr.Row(equal_height=True):
                            chat_title = gr.Textbox(
                                label="Title",
                                placeholder="Rename the chosen chat…",
                                scale=4,
                                elem_id="chat-title",
                            )
                            rename_btn = gr.Button("Rename", scale=1, min_width=70, elem_id="rename-chat")
                            delete_btn = gr.Button(
                                "Delete", variant="stop", scale=1, min_width=70, elem_id="delete-chat"
                            )
                        chats_status = gr.Markdown("", elem_id="chats-status")
                    with gr.Accordion("Settings", open=False):
                        top_k = gr.Slider(1, 20, value=s.top_k, step=1, label="Passages per question")
                        temperature = gr.Slider(
                            0.0, 1.5, value=s.temperature, step=0.05, label="Temperature (0: deterministic)"
                        )
                        max_tokens = gr.Slider(
                            16,
                            max(16, min(1024, s.n_ctx // 2)),
                            value=s.max_tokens,
                            step=8,
                            label="Longest answer (tokens)",
                        )
                        with gr.Row(equal_height=True):
                            model = gr.Textbox(
                                value=s.model,
                                label="Model file (.gguf path or bundled alias)",
                                scale=4,
                            )
                            load_btn = gr.Button("Load model", scale=1)
                        model_status = gr.Markdown(f"Model: `{s.model}`")
                    with gr.Accordion("Only some articles", open=False):
                        only_sources = gr.Dropdown(
                            choices=source_choices(rag_),
                            value=[],
                            multiselect=True,
                            label="Sources",
                            elem_id="filter-source",
                        )
                        author = gr.Textbox(
                            value="", label="Author (any of, comma-separated)", elem_id="filter-author"
                        )
                        with gr.Row(equal_height=True):
                            since = gr.Textbox(
                                value="", label="Since", placeholder="YYYY-MM-DD", elem_id="filter-since"
                            )
                            until = gr.Textbox(
                                value="", label="Until", placeholder="YYYY-MM-DD", elem_id="filter-until"
                            )
                        only_articles = gr.Dropdown(
                            choices=library_choices(rag_),
                            value=[],
                            multiselect=True,
                            label="Articles",
                            elem_id="filter-articles",
                        )
                with gr.Column(scale=2, min_width=320):
                    gr.Markdown("### Sources")
                    sources = gr.HTML(
                        sources_html([], None), js_on_load=SOURCES_JS, elem_id="sources", padding=False
                    )
                    with gr.Accordion("Searched for", open=False):
                        query = gr.Markdown("", elem_id="query")
                        untimed_btn = gr.Button(
                            "Ask again without its time", size="sm", elem_id="ignore-time"
                        )
                    gr.Markdown("### Article")
                    viewer = gr.HTML(ARTICLE_PLACEHOLDER, js_on_load=ARTICLE_JS, elem_id="article")
                    viewing = gr.State(None)
                    summarize_btn = gr.Button("Summarize this article", size="sm", elem_id="summarize-viewed")
            with gr.Tab("Library", id="library"):
                gr.Markdown(
                    "Add articles: " + " ".join(f"`{t}`" for t in UPLOAD_TYPES) + ", several files at once. "
                    "A `.json`, `.jsonl` or `.csv` dump holds one article per record."
                )
                files = gr.File(
                    label="Add articles", file_count="multiple", file_types=UPLOAD_TYPES, elem_id="upload"
                )
                with gr.Row(equal_height=True):
                    url_box = gr.Textbox(
                        label="Add by URL",
                        placeholder="https://… a page or an RSS/Atom feed (several: one per line)",
                        lines=1,
                        max_lines=6,
                        scale=5,
                        elem_id="add-url",
                    )
                    fetch_btn = gr.Button("Fetch", scale=1, min_width=90, elem_id="fetch")
                report = gr.Markdown("", elem_id="ingest-report")
                with gr.Row(equal_height=True):
                    new_name = gr.Textbox(
                        label="New collection (its own articles and chats)",
                        placeholder="e.g. work",
                        scale=5,
                        elem_id="new-collection",
                    )
                    create_btn = gr.Button("Create", scale=1, min_width=90, elem_id="create-collection")
                generation = gr.State(str(rag_.stats().get("generation", "")))
                table = gr.Dataframe(
                    value=library_table(rag_),
                    label="Articles",
                    interactive=False,
                    wrap=True,
                    column_widths=["26%", "10%", "20%", "8%", "9%", "27%"],
                    elem_id="articles",
                )
                gr.Markdown(
                    "Summarize an article in the chat, or remove it from the index (the file itself is "
                    "left alone):"
                )
                with gr.Row(equal_height=True):
                    chosen = gr.Dropdown(
                        choices=library_choices(rag_),
                        value=None,
                        show_label=False,
                        container=False,
                        scale=4,
                        elem_id="remove-choice",
                    )
                    library_summarize_btn = gr.Button(
                        "Summarize", scale=1, min_width=100, elem_id="summarize-chosen"
                    )
                    remove_btn = gr.Button("Remove", variant="stop", scale=1, min_width=100)
                removed = gr.Markdown("")
                gr.Markdown(
                    f"Compare how 2 to {rag.MAX_ARTICLES} articles report the same thing (where they agree, "
                    "where their figures and names differ):"
                )
                with gr.Row(equal_height=True):
                    comparing_ids = gr.Dropdown(
                        choices=library_choices(rag_),
                        value=[],
                        multiselect=True,
                        max_choices=rag.MAX_ARTICLES,
                        show_label=False,
                        container=False,
                        scale=4,
                        elem_id="compare-choice",
                    )
                    compare_btn = gr.Button("Compare", scale=1, min_width=100, elem_id="compare-chosen")

        # Events that call one handler share its concurrency group, named after it below: Gradio's
        # default group is the function object, and a bound method is a new object at each access.
        chat_outputs = [chatbot, turns, question, sources, query, status, timings, shown, chat_id]
        # What a question is asked with: the settings and filters, and the conversation.
        asked_with = [
            top_k,
            temperature,
            max_tokens,
            only_sources,
            author,
            since,
            until,
            only_articles,
            turns,
            chat_id,
        ]
        asking = gr.on(
            [question.submit, send.click],
            handle.ask,
            inputs=[question, *asked_with],
            outputs=chat_outputs,
            api_name="ask",
            show_progress="hidden",
            trigger_mode="once",
            # The model's Gate is the one queue: it tells a waiting user so, and refuses when full.
            concurrency_limit=None,
        )
        untimed = untimed_btn.click(
            handle.ask_untimed,
            inputs=[shown, *asked_with],
            outputs=chat_outputs,
            api_name="ask_untimed",
            show_progress="hidden",
            trigger_mode="once",
            concurrency_limit=None,
        )
        # Summarize: the article open beside the chat, or the one chosen in the library;
        # Compare: the articles chosen in the library.
        summarizing: list[Any] = []
        for button, which, task in (
            (summarize_btn, viewing, handle.summarize_article),
            (library_summarize_btn, chosen, handle.summarize_article),
            (compare_btn, comparing_ids, handle.compare_articles),
        ):
            shown_chat = button.click(
                lambda: gr.Tabs(selected="chat"), outputs=[tabs], api_visibility="private"
            )
            summarizing.append(
                shown_chat.then(
                    task,
                    inputs=[which, *asked_with],
                    outputs=chat_outputs,
                    show_progress="hidden",
                    trigger_mode="once",
                    concurrency_limit=None,
                    concurrency_id=task.__name__,
                    api_visibility="private",
                )
            )
            summarizing[-1].then(
                handle.saved_chats,
                inputs=[chat_id],
                outputs=[past],
                concurrency_id="saved_chats",
                api_visibility="private",
            )
        stop_btn.click(
            handle.stop, outputs=[status], api_name="stop", concurrency_limit=None, show_progress="hidden"
        )
        new_chat_btn.click(
            handle.new_chat,
            outputs=[chatbot, turns, sources, query, status, timings, shown, viewer, chat_id],
            cancels=[asking, untimed, *summarizing],
            api_name="new_chat",
        ).then(lambda: None, outputs=[viewing], api_visibility="private")
        open_btn.click(
            handle.open_chat,
            inputs=[past],
            outputs=[
                chatbot,
                turns,
                sources,
                query,
                timings,
                shown,
                viewer,
                chat_id,
                chat_title,
                chats_status,
            ],
            cancels=[asking, untimed, *summarizing],
            api_name="open_chat",
        ).then(lambda: None, outputs=[viewing], api_visibility="private")
        rename_btn.click(
            handle.rename_chat,
            inputs=[past, chat_title],
            outputs=[past, chats_status],
            api_name="rename_chat",
        )
        delete_btn.click(
            handle.delete_chat,
            inputs=[past, chat_id],
            outputs=[past, chat_id, chats_status],
            api_name="delete_chat",
        )
        chatbot.select(
            handle.pick_turn, inputs=[turns], outputs=[sources, query, shown], api_visibility="private"
        )
        sources.click(handle.open_source, inputs=[turns], outputs=[viewer, viewing], api_visibility="private")
        library_outputs = [header, table, chosen, only_sources, only_articles, comparing_ids]
        files.upload(
            handle.add_articles,
            inputs=[files],
            outputs=[files, report, *library_outputs],
            api_name="add_articles",
            concurrency_id="library",
            show_progress_on=[report],
        )
        gr.on(
            [fetch_btn.click, url_box.submit],
            handle.add_urls,
            inputs=[url_box],
            outputs=[url_box, report, *library_outputs],
            api_name="add_urls",
            concurrency_id="library",
            show_progress_on=[report],
        )
        gr.Timer(REFRESH_S).tick(
            handle.refresh,
            inputs=[generation],
            outputs=[generation, *library_outputs],
            api_visibility="private",
            show_progress="hidden",
        )
        remove_btn.click(
            handle.remove_article,
            inputs=[chosen],
            outputs=[removed, *library_outputs],
            api_name="remove_article",
            concurrency_id="library",
        )
        gr.on(
            [load_btn.click, model.submit],
            handle.load_model,
            inputs=[model],
            outputs=[model_status, header],
            api_name="load_model",
        )
        switched = [
            chatbot,
            turns,
            sources,
            query,
            status,
            timings,
            shown,
            viewer,
            chat_id,
            past,
            chats_status,
            generation,
            *library_outputs,
        ]
        collection.input(
            handle.switch_collection,
            inputs=[collection],
            outputs=switched,
            cancels=[asking, untimed, *summarizing],
            api_name="switch_collection",
            concurrency_id="switch_collection",
        ).then(lambda: None, outputs=[viewing], api_visibility="private")
        gr.on(
            [create_btn.click, new_name.submit],
            handle.create_collection,
            inputs=[new_name],
            outputs=[collection, new_name, report],
            api_name="create_collection",
        ).success(
            handle.switch_collection,
            inputs=[collection],
            outputs=switched,
            concurrency_id="switch_collection",
            api_visibility="private",
        ).then(lambda: None, outputs=[viewing], api_visibility="private")
        demo.load(handle.library, outputs=library_outputs, api_name="library")
        demo.load(handle.collections_list, outputs=[collection], api_name="collections")
        demo.unload(handle.engine.leave)
        demo.load(
            handle.saved_chats,
            inputs=[chat_id],
            outputs=[past],
            api_name="saved_chats",
            concurrency_id="saved_chats",
        )
        # A finished turn is in the saved chats: the picker shows it.
        for answered in (asking, untimed):
            answered.then(
                handle.saved_chats,
                inputs=[chat_id],
                outputs=[past],
                concurrency_id="saved_chats",
                api_visibility="private",
            )
    return demo
