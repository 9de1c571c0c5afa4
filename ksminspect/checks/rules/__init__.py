"""Every check, one function each, registered in this order (the order of
``ksminspect check --help`` and of the README's table): the walks
themselves, the rmap_lists, the trees, each item's own fields, the reverse
map, and the totals."""

from ksminspect.checks.rules import walks, rmap_lists, trees, items, rmap_walk, totals  # noqa: F401
