"""The edge's rule engine, started: ThingsBoard rule chains parsed (``chain.py``), the node
subset the edge supports and their configuration checks (``nodes.py``), a chain's validation,
every problem at once (``validate.py``), and the rule scripts' sandbox (``sandbox.py``,
docs/rules-scripts.md). chain, nodes and validate are pure logic (no threads, no storage).
Nothing here is wired into the running agent: chains are checked (``edge-sync rules check``),
not run yet (docs/rules.md).
"""
