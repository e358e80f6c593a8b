"""The pass-agnostic core: capture (hierarchical torch.fx), the activation catalogue,
targets (sites, layers, blocks, the model), selection rules, the pass contract and its
runner, pipeline strings, the registry, the recipe, the report, and graph analysis. The
core never imports a pass; inserted modules describe themselves (:mod:`.protocol`)."""
