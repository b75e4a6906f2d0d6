"""The Gradio face of `rag`: a chat over your articles, their sources, and the library.

It uses only the public names of the `rag` package. Everything stays on this machine: the
server binds loopback unless told otherwise, there is no share link, no analytics, no web
font, and Gradio serves back only the files it stored itself on upload.

`ui.app` lays the app out and wires its events to `ui.handlers`; `ui.render` makes what it
shows; `ui.serving` serves it.
"""

import os

# Gradio decides on telemetry when it is imported and when Blocks are built: this runs before
# any module of the package imports it.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
