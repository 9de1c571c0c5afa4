"""KSM's slab caches: every allocated object, to find what no walk reaches."""

from __future__ import annotations

from array import array
from typing import Iterator, Optional, Sequence

import drgn
from drgn.helpers.linux.slab import (
    find_slab_cache,
    get_slab_cache_aliases,
    slab_cache_for_each_allocated_object,
)

from ksminspect.layout import KsmLayout

# KSM_KMEM_CACHE() names its caches "ksm_" + the struct's old name, before
# and after v6.2's renames.
KSM_CACHES = ("ksm_rmap_item", "ksm_stable_node", "ksm_mm_slot")


def allocated_objects(prog: drgn.Program, layout: KsmLayout
                      ) -> Iterator[tuple[str, str, Optional[Sequence[int]]]]:
    """``(cache name, struct tag, addresses)`` per KSM cache; addresses is None
    when SLUB merged the cache into another (objects cannot be told apart)."""
    types = (layout.rmap_item.type_name, layout.stable_node.type_name, layout.mm_slot.type_name)
    aliases: Optional[dict[str, str]] = None
    for name, tag in zip(KSM_CACHES, types):
        cache = find_slab_cache(prog, name)
        if cache is None:
            if aliases is None:
                try:
                    aliases = get_slab_cache_aliases(prog)
                except (LookupError, ValueError, drgn.FaultError):
                    aliases = {}
            yield aliases.get(name, name), tag, None
            continue
        yield name, tag, array("Q", (obj.value_() for obj in
                                     slab_cache_for_each_allocated_object(cache, "void")))
