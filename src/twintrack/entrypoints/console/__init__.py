"""The operator console at `/ui`: server-rendered pages (Jinja2) made live with htmx and its SSE
extension, both vendored under `static/` so the console works air-gapped.

It is served by the API process over the same container, so it shows exactly what the API
would: `mount.mount_console` adds its routes and static files to an app made by
`create_app`.
"""
