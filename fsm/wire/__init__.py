"""What crosses a process boundary, shared by both sides: frames, bodies, bounds, documents.

``protocol`` is the ingest link's frames (wrapper <-> control plane) and ``transmit`` the effect
that sends them; ``outbox`` the wrapper's at-least-once buffer; ``request_bodies`` and ``httpjson``
the HTTP bodies and their JSON errors; ``http_guard`` the request-size guard; ``openapi`` derives
the OpenAPI documents from the types; ``slash`` says which prompts are commands.
"""
