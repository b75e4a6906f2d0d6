"""The HTTP API: grounded answers in the OpenAI chat completions wire format, plus retrieval.

`create_app(rag)` returns a FastAPI app; `rag serve` mounts the chat UI beside it, so both
share one `RAG`: one model, one `Gate` (the lock and the bounded queue). Routes:

- `POST /v1/chat/completions`: the last user message is the question, earlier user and
  assistant messages the conversation (a follow-up is rewritten into a standalone query).
  The reply is the cited answer; `sources` (as in `Answer.to_dict()`), `found`, `support`
  and `query` travel as extra fields, in the final chunk when streaming. A streamed answer
  that verification withdraws ends with a chunk saying so (`withdrawn`) and carrying the
  `answer` to show instead. The caller's system messages
  are ignored: the grounding prompt is this server's.
- `GET /v1/models`, `GET /v1/models/{id}`: the one model this server answers as.
- `POST /v1/retrieve`: passages only, with scores and evidence, for callers with their own model.
- `GET /v1/chats`, `GET|PATCH|DELETE /v1/chats/{id}`: the caller's saved chats (a request
  with a `conversation` id adds its turn to one), as JSON or Markdown, renamed, deleted.
- `GET /health`: liveness and what the index holds; open with an API key alone, but under
  a login it needs the login or the key.

With `login=(user, password)` (`rag serve --auth`) every route, /health included, needs that
login as HTTP Basic credentials, or the API key as a bearer token when there is one.

Errors have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`.

The package, top down: `app` composes the route groups of `routes` (`meta`, `articles`,
`chat`, `chats`), each taking a `pick.Picker` (the RAG of the collection a request names)
and the dependencies of `auth` (the credential check); `limits` holds the body limit
middleware, `errors` OpenAI's error shape, `schemas` the wire models.
"""

from __future__ import annotations

from .app import create_app
from .auth import Login, logins_of, user_of
from .errors import ApiError, from_rag_error
from .limits import MAX_BODY_BYTES, BodyLimit
from .schemas import MODEL_ID, ChatCompletion, ChatCompletionChunk

__all__ = [
    "MAX_BODY_BYTES",
    "MODEL_ID",
    "ApiError",
    "BodyLimit",
    "ChatCompletion",
    "ChatCompletionChunk",
    "Login",
    "create_app",
    "from_rag_error",
    "logins_of",
    "user_of",
]
