"""Reading a cuobjdump -sass listing: its instructions, and which of them sit in the loops that issue matrix
instructions (an attention kernel's key loop), where a spilled register costs every trip.

Loops are found the way compilers find them, on the control-flow graph: a branch to a block that dominates it (every
path from the kernel's entry to the branch passes through the target) closes a loop. An address test alone ("a
branch back to a lower address") is fooled by ptxas's layout of mbarrier waits: the retry loop of each wait sits
after the kernel's EXIT and jumps back to the instruction after the wait, which looks like a loop around everything
in between; a Gluon kernel's spills before its key loop were counted as in it that way.
"""
from __future__ import annotations

import re

import networkx as nx

ENTRY = 0


def sass_listing(sass: str) -> list[tuple[int, str]]:
    """(address, instruction) of each instruction of a cuobjdump -sass listing, `/*0a30*/  FMUL R1, R2, R3 ;`;
    addresses grow past four hex digits in kernels longer than 4096 instructions (the Gluon kernels are)."""
    return [(int(address, 16), text.strip()) for address, text in
            re.findall(r"^\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*(?:/\* 0x[0-9a-f]+ \*/)?\s*$", sass, re.MULTILINE)]


def sass_opcode(instruction: str) -> str:
    """`FMUL` of `@P0 FMUL R1, R2, R3 ;`: the first word that is not a predicate."""
    return next((word for word in instruction.split() if not word.startswith("@")), "")


def spills_in_matmul_loops(sass: str) -> int:
    """Local-memory loads and stores (LDL, STL: spilled registers) inside the innermost loops that issue matrix
    instructions (`matmul_loops`): the key loop of an attention kernel, whose every trip they slow."""
    return sum(1 for loop in matmul_loops(sass) for text in loop if sass_opcode(text).split(".")[0] in ("LDL", "STL"))


def matmul_loops(sass: str) -> list[list[str]]:
    """The instructions of each innermost loop that issues matrix instructions, in address order, loops in the order
    of their headers: an attention kernel's key loops (one per kind of key block in a masked kernel). Of the loops
    holding a matrix instruction, the innermost are those with no other such loop inside them (an outer loop over
    query tiles is not one, nor a barrier's spin loop, which holds no matrix instruction). A loop's body includes
    the out-of-line retry paths of its barrier waits, which run only when a wait is not yet satisfied."""
    listed = sass_listing(sass)
    graph, block_of = _control_flow(listed)
    loops = _natural_loops(graph)
    has_mma = {block_of[i] for i, (_, text) in enumerate(listed) if "MMA" in sass_opcode(text)}
    matmul = {header: body for header, body in loops.items() if body & has_mma}
    innermost = sorted(header for header in matmul
                       if not any(other != header and other in matmul[header] for other in matmul))
    return [[text for i, (_, text) in enumerate(listed) if block_of[i] in matmul[header]] for header in innermost]


def _control_flow(listed: list[tuple[int, str]]) -> tuple[nx.DiGraph, list[int]]:
    """The basic blocks of a listing as a graph (a block is named by the index of its first instruction), and the
    block of each instruction. A branch's target starts a block, as does whatever follows a branch or an EXIT."""
    index_at = {address: i for i, (address, _) in enumerate(listed)}
    targets = [_branch_target(text) for _, text in listed]
    leaders = {ENTRY} | {index_at[t] for t in targets if t in index_at} | \
        {i + 1 for i, (_, text) in enumerate(listed) if _ends_block(text) and i + 1 < len(listed)}
    block_of, current = [], ENTRY
    for i in range(len(listed)):
        current = i if i in leaders else current
        block_of.append(current)
    graph = nx.DiGraph()
    graph.add_nodes_from(leaders)
    for i, (_, text) in enumerate(listed):
        if i + 1 < len(listed) and block_of[i + 1] == block_of[i]:
            continue  # not a block's last instruction
        if targets[i] in index_at:
            graph.add_edge(block_of[i], index_at[targets[i]])
        if i + 1 < len(listed) and _falls_through(text):
            graph.add_edge(block_of[i], i + 1)
    return graph, block_of


def _natural_loops(graph: nx.DiGraph) -> dict[int, set[int]]:
    """Each loop's header and the blocks of its body (loops sharing a header are one): for a back edge u -> h (h
    dominates u), the body is h and every block that reaches u without passing through h."""
    reachable = graph.subgraph(nx.descendants(graph, ENTRY) | {ENTRY})
    dominator = nx.immediate_dominators(reachable, ENTRY)
    loops: dict[int, set[int]] = {}
    for tail, head in reachable.edges:
        if _dominates(dominator, head, tail):
            body = loops.setdefault(head, {head})
            if tail != head:
                body |= {tail} | nx.ancestors(reachable.subgraph(set(reachable) - {head}), tail)
    return loops


def _dominates(dominator: dict[int, int], a: int, b: int) -> bool:
    """Whether every path from the entry to block b passes through block a (walking b's immediate dominators)."""
    while b != a:
        parent = dominator.get(b, b)
        if parent == b:  # the entry: a was not met
            return False
        b = parent
    return True


def _branch_target(instruction: str) -> int | None:
    if not sass_opcode(instruction).startswith("BRA"):
        return None
    found = re.search(r"0x([0-9a-f]+)\s*;?$", instruction)
    return int(found.group(1), 16) if found else None


def _predicated(instruction: str) -> bool:
    first = instruction.split()[0] if instruction.split() else ""
    return first.startswith("@") and first not in ("@PT", "@UPT")


def _ends_block(instruction: str) -> bool:
    return sass_opcode(instruction).split(".")[0] in ("BRA", "EXIT", "RET", "BRX", "JMX", "JMP")


def _falls_through(instruction: str) -> bool:
    """Whether the next instruction may run after this one: anything but an unconditional jump or exit."""
    return not _ends_block(instruction) or _predicated(instruction)
