"""The site index: the activation sites of every traced region and of eager code, found once
per compile and found again only where the rewriter changed something.

One definition of a site serves the report, every pass and the probes (tools/probes.py):
core/targets.py finds them in a traced graph (with core/formulas.py's analysis), core/eager.py
in eager code, by the same rules. The index caches their results per region; the
:class:`~vgpcompile.core.rewriter.Rewriter` calls :meth:`SiteIndex.invalidate` for the region a
pass edited, and the runner does so for a region whose graph changed by other means.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import fx, nn

from .catalogue import Catalogue
from .eager import find_eager_sites
from .targets import Site, find_sites


class SiteIndex:
    """Sites by region (``""`` is the root graph) and in eager code, computed lazily."""

    def __init__(
        self,
        regions: Mapping[str, fx.GraphModule],
        catalogue: Catalogue,
        eager: Sequence[tuple[str, nn.Module]] = (),
        outputs: set[str] | frozenset[str] = frozenset(),
    ) -> None:
        self.regions = regions
        self.catalogue = catalogue
        self.eager = list(eager)
        self.outputs = set(outputs)
        self._sites: dict[str, list[Site]] = {}
        self._eager: list[Site] | None = None
        self._by_id = {id(gm): prefix for prefix, gm in regions.items()}
        self.computed = 0  # how many times a region's sites were found (for tests and figures)

    def sites(self, prefix: str) -> list[Site]:
        """The sites of region ``prefix``, as the graph is now."""
        if prefix not in self._sites:
            self._sites[prefix] = find_sites(self.regions[prefix], prefix, self.catalogue)
            self.computed += 1
        return self._sites[prefix]

    def eager_sites(self) -> list[Site]:
        if self._eager is None:
            self._eager = find_eager_sites(self.eager, self.catalogue, self.outputs) if self.eager else []
        return self._eager

    def all(self) -> list[Site]:
        return [s for prefix in self.regions for s in self.sites(prefix)] + self.eager_sites()

    def region_of(self, gm: nn.Module | None) -> str | None:
        prefix = self._by_id.get(id(gm))
        return prefix if prefix is not None and self.regions.get(prefix) is gm else None

    def invalidate(self, prefix: str | None = None) -> None:
        """Forget region ``prefix``'s sites (every region's, and eager code's, when None)."""
        if prefix is None:
            self._sites.clear()
            self._eager = None
        else:
            self._sites.pop(prefix, None)

    def invalidate_eager(self) -> None:
        self._eager = None
