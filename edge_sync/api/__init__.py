"""What devices and operators talk to: the in-process device service, the device HTTP API, the
admin HTTP API and the parsing of their bodies. Actors live in ``edge_sync.actors``; this package
turns requests into their messages and their answers into HTTP responses."""
