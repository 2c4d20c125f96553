"""The edge's rule engine: ThingsBoard rule chains parsed (``chain.py``), the node subset the
edge supports and their configuration checks (``nodes.py``), a chain's validation, every problem
at once (``validate.py``), the rule scripts' sandbox (``sandbox.py``, docs/rules-scripts.md),
the executor that walks a chain for one message and returns ordered outcomes (``engine.py``),
the deduplication and aggregation windows (``window.py``), one entity's rule state, its alarms
and windows, as one record (``session.py``), and the chain in force with its counts
(``runtime.py``, the only module here with a lock).

All of it is pure: no storage, no network, no clock reads (times and ids are injected), no
threads of its own. The agent wires it in through the entity actors, which run each entity's
messages through its ``EntityRules``, act on the outcomes and persist the record (docs/rules.md).
"""
