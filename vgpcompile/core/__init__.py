"""The pass-agnostic core, three subsystems as named modules (DESIGN.md's data flow):

1. capture: capture.py (hierarchical torch.fx), region.py (a region keeps the user's class),
   modes.py (one graph per region for train and eval), verify.py + arguments.py (the capture
   checked on example inputs; constant arguments).
2. sites: catalogue.py (activations in every spelling), targets.py + formulas.py (sites,
   layers, blocks in traced graphs; written-out formulas), eager.py (the same in eager code),
   index.py (SiteIndex: found once per compile, read by the report, every pass and
   tools/probes.py).
3. pass machinery: contract.py (Pass, Env, PassResult), registry.py, pipeline.py, facts.py
   (the checked reads/writes vocabulary), runner.py (order, run_pass), rewriter.py (the only
   way a pass changes a graph, and the read-only queries it asks instead of reading one),
   rewrite.py (the older function spelling of the rewriter), calibrate.py (value ranges),
   verify_run.py (every reported change ran), select.py, protocol.py (inserted modules
   describe themselves), recipe.py, report.py, graph.py (nonlinear depth), affine.py,
   lookup.py (submodule and attribute look-ups without nn.Module.__getattr__'s misses),
   seeding.py (seeded draws by code that takes no generator).

The core never imports a pass.
"""
