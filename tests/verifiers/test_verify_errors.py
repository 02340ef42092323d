"""Bad input gets an error that says what was wrong."""
import pytest
import torch

from specdec.verifiers import CandidateKind, DraftTree, verify_tree, verify_tree_typical


def _tree(kind=CandidateKind.SAMPLED, q=None, tokens=(3, 1, 2)):
    q = torch.full((1, 3, 5), 0.2) if q is None else q
    return DraftTree.from_lists([list(tokens)], [[-1, 0, 0]],
                                kind=torch.full((1, 3), int(kind), dtype=torch.int8), draft_probs=q)


def test_shape_and_type_errors():
    tree = _tree()
    with pytest.raises(ValueError, match=r"logits must be \[B, T, V\] with \[B, T\] = \[1, 3\]"):
        verify_tree(tree, torch.zeros(1, 4, 5), 1.0)
    with pytest.raises(ValueError, match="floating point"):
        verify_tree(tree, torch.zeros(1, 3, 5, dtype=torch.long), 1.0)
    with pytest.raises(TypeError, match="DraftTree"):
        verify_tree((tree.tokens, tree.parents), torch.zeros(1, 3, 5))
    with pytest.raises(ValueError, match=r"uniforms must be \[B, U\]"):
        verify_tree(tree, torch.zeros(1, 3, 5), 1.0, uniforms=torch.rand(1, 2))
    with pytest.raises(ValueError, match=r"uniforms must lie in \[0, 1\)"):
        verify_tree(tree, torch.zeros(1, 3, 5), 1.0, uniforms=torch.full((1, 3), 1.0))
    with pytest.raises(ValueError, match="tokens must lie in"):
        verify_tree(_tree(tokens=(3, 9, 2)), torch.zeros(1, 3, 5), 1.0)


def test_parameter_errors():
    tree, logits = _tree(), torch.zeros(1, 3, 5)
    with pytest.raises(ValueError, match="temperature"):
        verify_tree(tree, logits, float("nan"))
    with pytest.raises(ValueError, match="top_p"):
        verify_tree(tree, logits, 1.0, top_p=1.5)
    with pytest.raises(ValueError, match="top_k"):
        verify_tree(tree, logits, 1.0, top_k=0.5)
    with pytest.raises(ValueError, match="one value per row"):
        verify_tree(tree, logits, torch.ones(2))
    with pytest.raises(ValueError, match="posterior"):
        verify_tree_typical(tree, logits, 1.0, posterior_alpha=0.0)


def test_draft_distribution_errors():
    logits = torch.zeros(1, 3, 5)
    with pytest.raises(ValueError, match="need tree.draft_probs"):
        verify_tree(DraftTree.from_lists([[3, 1, 2]], [[-1, 0, 0]], kind=torch.ones(1, 3, dtype=torch.int8)),
                    logits, 1.0)
    with pytest.raises(ValueError, match="not a distribution.*pass probabilities, not logits"):
        verify_tree(_tree(q=torch.randn(1, 3, 5)), logits, 1.0)
    q = torch.tensor([0.0, 0.5, 0.5, 0.0, 0.0]).expand(1, 3, 5)
    with pytest.raises(ValueError, match="probability 0"):
        verify_tree(_tree(q=q.clone(), tokens=(3, 1, 4)), logits, 1.0)
    with pytest.raises(ValueError, match="repeat a token"):
        verify_tree(_tree(CandidateKind.SAMPLED_NO_REPLACEMENT, tokens=(3, 1, 1)), logits, 1.0)
    # the same inputs are fine where they are legal: greedy rows ignore q, SAMPLED may repeat
    verify_tree(_tree(q=torch.randn(1, 3, 5)), logits, 0.0)
    verify_tree(_tree(CandidateKind.SAMPLED, tokens=(3, 1, 1)), logits, 1.0)
