"""The aten ops make_fx traces a spec's functions to, by name: what the lowering and the linear-bias proof
(additive.py) both read off a graph node."""
from __future__ import annotations

import torch

# ops that only reshape or alias a value: the value is its argument's
PASSTHROUGH = {"alias", "clone", "view", "_unsafe_view", "reshape", "expand", "unsqueeze", "squeeze", "detach",
               "lift_fresh_copy", "lift_fresh", "contiguous", "broadcast_to", "expand_as"}
# dtype conversions: the value is its argument's, in the dtype torch gives the node
CASTS = {"_to_copy", "to", "type_as", "_convert_element_type"}


def op_name(node: torch.fx.Node) -> str:
    """`add` for aten.add.Tensor: the op's name without its overload."""
    return node.target.overloadpacket.__name__ if hasattr(node.target, "overloadpacket") else str(node.target)
