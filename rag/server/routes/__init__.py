"""The API's routes in groups, each a module whose `add_routes` puts its routes on a router:
`meta` (health, models, collections), `articles` (retrieve, summarize, compare), `chat`
(chat completions) and `chats` (saved chats)."""
