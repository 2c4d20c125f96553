"""Device sessions, transport-neutral: what a device waits for (server-side RPC requests, shared
attribute updates, answers to attribute requests) and the lifecycle of the RPC requests the
cloud sends it. The HTTP device API uses them now; another transport plugs in the same way.

Pure logic (no threads, no I/O, time passed in): ``rpc.py`` (the RPC lifecycle of one device),
``subscribers.py`` (one-shot long-poll waiters, safe to resolve from any thread),
``fetch.py`` (when to ask the cloud for shared attributes). ``session.py`` holds one device's
state; it belongs to that device's entity actor.
"""
