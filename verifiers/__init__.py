"""Tree verification rules for speculative decoding. Depends on torch alone."""
from .tree import CandidateKind, DraftTree, MAX_NODES

__all__ = ["CandidateKind", "DraftTree", "MAX_NODES"]
