"""Losses and heads against plain loops written from the papers' definitions, and closed forms.

The definitions are those of the loss modules' docstrings and docs/reference.md ("Semi-hard
triplet mining", "Exemplar", "Rotation", "InfoNCE across shots", "Shot order", "Object-level
triplet"). Each test says in its docstring which defect it catches.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from vivi.losses import (
    ExemplarLoss,
    ObjectClassificationLoss,
    ObjectLoss,
    ObjectTripletLoss,
    RotationLoss,
    SemiHardTripletLoss,
    ShotOrderLoss,
    VideoInfoNCELoss,
    ablate_objects,
    box_grid_cells,
    extract_box_features,
    group_info_nce_logits,
    info_nce_logits,
    reverse_shots_randomly,
    rotate_batch,
    semi_hard_triplet_loss,
    shot_labels,
)
from vivi.models.heads import (
    BilinearCritic,
    ExemplarHead,
    LSTMPredictor,
    MLPCritic,
    ObjectClassHead,
    RotationHead,
    ShotOrderHead,
    ShotProjection,
    prediction_pairs,
)

# --------------------------------------------------------------------------------------
# Plain-loop references, written from the definitions
# --------------------------------------------------------------------------------------


def triplet_loop(emb: torch.Tensor, labels, margin: float, stats: dict | None = None) -> torch.Tensor:
    """Semi-hard triplet loss literally: per positive pair (a, p), the closest negative strictly
    farther than p, else the farthest negative; mean over the positive pairs. Anchors without any
    negative form no triplet. ``stats`` receives the pair counts the diagnostics report."""
    b = emb.shape[0]
    labels = [int(x) for x in labels]
    total, count, semi_hard, active = emb.new_zeros(()), 0, 0, 0
    for a in range(b):
        negs = [n for n in range(b) if labels[n] != labels[a]]
        if not negs:
            continue
        for p in range(b):
            if p == a or labels[p] != labels[a]:
                continue
            d_ap = ((emb[a] - emb[p]) ** 2).sum()
            d_an = [((emb[a] - emb[n]) ** 2).sum() for n in negs]
            farther = [d for d in d_an if d.item() > d_ap.item()]
            d_neg = min(farther, key=lambda d: d.item()) if farther else max(d_an, key=lambda d: d.item())
            term = torch.clamp(margin + d_ap - d_neg, min=0.0)
            total = total + term
            count += 1
            semi_hard += bool(farther)
            active += term.item() > 0
    if stats is not None:
        stats.update(pairs=count, semi_hard=semi_hard, active=active)
    return total / max(count, 1)


def triplet_by_class(emb: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """The same definition, one class at a time (vectorised over its anchors, positives and
    negatives): fast enough for B = 1024, and written with a broadcast comparison on directly
    computed distances instead of a sort and a search."""
    d = torch.cdist(emb, emb, compute_mode="donot_use_mm_for_euclid_dist") ** 2
    total, count = emb.new_zeros(()), 0
    for c in labels.unique():
        members, others = labels == c, labels != c
        if members.sum() < 2 or not others.any():
            continue
        d_ap = d[members][:, members]  # (A, A): anchor a, positive p (the diagonal is not a pair)
        d_an = d[members][:, others]  # (A, N_neg)
        farther = d_an[:, None, :] > d_ap[:, :, None]  # (A, A, N_neg)
        closest_farther = torch.where(farther, d_an[:, None, :], torch.inf).min(dim=2).values
        d_neg = torch.where(farther.any(dim=2), closest_farther, d_an.max(dim=1).values[:, None])
        off_diagonal = ~torch.eye(d_ap.shape[0], dtype=torch.bool)
        total = total + ((margin + d_ap - d_neg).clamp_min(0) * off_diagonal).sum()
        count += int(off_diagonal.sum())
    return total / max(count, 1)


def infonce_loop(queries, keys, target_shot, group_videos=None, reduction="mean") -> tuple[torch.Tensor, float]:
    """VIVI eq. (4) with footnote 2, explicit softmax: the true shot against every shot of every
    other video (of the same group of ``group_videos`` consecutive videos, if given). Reduction
    "mean": over all predictions; "sum": Object-centric eq. (1), sum over videos and pairs / N.
    Returns the loss and the fraction of predictions whose true shot scores highest."""
    n, p, _ = queries.shape
    k = keys.shape[1]
    group = (lambda i: i // group_videos) if group_videos else (lambda i: 0)
    losses, correct = [], 0
    for i in range(n):
        for pair in range(p):
            q = queries[i, pair]
            true_score = q @ keys[i, int(target_shot[pair])]
            others = [q @ keys[j, s] for j in range(n) if j != i and group(j) == group(i) for s in range(k)]
            denom = torch.exp(true_score) + sum(torch.exp(o) for o in others)
            losses.append(-torch.log(torch.exp(true_score) / denom))
            correct += all(true_score.item() > o.item() for o in others)
    total = torch.stack(losses).sum()
    return (total / (n * p) if reduction == "mean" else total / n), correct / (n * p)


# --------------------------------------------------------------------------------------
# Semi-hard triplet
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("num_classes", [2, 5])
def test_triplet_matches_loop_value_gradient_and_diagnostics(seed, num_classes):
    """Any deviation from the mining rule (a wrong negative, a sign flipped, a wrong divisor) on
    random data changes the value or the gradient; wrong diagnostics change the pair counts."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(20, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(num_classes, (20,), generator=g)
    for margin in (0.5, 3.0):
        e1 = emb.clone().requires_grad_(True)
        e2 = emb.clone().requires_grad_(True)
        loss, diag = semi_hard_triplet_loss(e1, labels, margin)
        stats: dict = {}
        ref = triplet_loop(e2, labels, margin, stats)
        torch.testing.assert_close(loss, ref)
        loss.backward()
        ref.backward()
        torch.testing.assert_close(e1.grad, e2.grad)
        assert diag["num_positive_pairs"].item() == stats["pairs"]
        assert diag["frac_semi_hard"].item() == pytest.approx(stats["semi_hard"] / stats["pairs"])
        assert diag["frac_active"].item() == pytest.approx(stats["active"] / stats["pairs"])


def test_triplet_fallback_closed_form():
    """Without a farther negative the farthest one is used (not the closest, not none)."""
    # 1-D: positives at 0 and 2, the negative at 1 is closer than the positive for both
    # anchors, so no farther negative exists: d(a, n) = 1 for both pairs, each term
    # 0.5 + 4 - 1 = 3.5. L = (1 + 2 (x0 - x1)^2 - (x0 - x2)^2 - (x1 - x2)^2) / 2, whose gradient
    # at (0, 2, 1) is (-3, 3, 0).
    emb = torch.tensor([[0.0], [2.0], [1.0]], requires_grad=True)
    loss, diag = semi_hard_triplet_loss(emb, torch.tensor([0, 0, 1]), margin=0.5)
    assert loss.item() == pytest.approx(3.5)
    assert diag["frac_semi_hard"].item() == 0.0
    loss.backward()
    assert emb.grad[:, 0].tolist() == pytest.approx([-3.0, 3.0, 0.0])


def test_triplet_picks_closest_farther_negative():
    """The semi-hard negative is the *closest* of the farther ones, not any farther one."""
    # anchor 0, positive 1 (d = 1); negatives at d = 0.25 (closer, skipped), 4 and 9:
    # the semi-hard negative is the one at 4 -> 5 + 1 - 4 = 2 for pair (0, 1).
    emb = torch.tensor([[0.0], [1.0], [-0.5], [2.0], [3.0]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    loss, _ = semi_hard_triplet_loss(emb, labels, margin=5.0)
    torch.testing.assert_close(loss, triplet_loop(emb, labels, 5.0))
    # pairs (0, 1) and (1, 0) alone: the negatives get distinct labels, so they have no positive
    loss01, _ = semi_hard_triplet_loss(emb, torch.tensor([0, 0, 1, 2, 3]), margin=5.0)
    # pair (1, 0): d_ap = 1, d(1, n) = 2.25, 1, 4 -> closest farther = 2.25 -> 5 + 1 - 2.25
    assert loss01.item() == pytest.approx(((5 + 1 - 4) + (5 + 1 - 2.25)) / 2)


def test_triplet_ties_are_not_farther():
    """d(a, n) == d(a, p) is not "strictly farther": a non-strict search would pick the tie."""
    emb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    loss, diag = semi_hard_triplet_loss(emb, torch.tensor([0, 0, 1]), margin=0.5)
    # pair (0,1): d_ap = 1, only negative d = 1 (tie) -> fallback 1 -> 0.5
    # pair (1,0): d_ap = 1, d(1, 2) = 2 > 1 -> 0.5 + 1 - 2 < 0 -> 0
    assert loss.item() == pytest.approx(0.25)
    assert diag["frac_semi_hard"].item() == 0.5


def test_triplet_identical_embeddings_give_margin():
    """All distances 0: every pair contributes exactly the margin (divisor = number of pairs)."""
    emb = torch.ones(12, 4, requires_grad=True)
    loss, _ = SemiHardTripletLoss(margin=0.5)(emb, torch.arange(12) % 3)
    assert loss.item() == pytest.approx(0.5)


def test_triplet_perfectly_separated_is_zero():
    """Classes farther apart than the margin: no pair is active (the hinge is at 0)."""
    centres = torch.eye(4) * 10
    labels = torch.arange(4).repeat_interleave(3)
    loss, diag = semi_hard_triplet_loss(centres[labels], labels, margin=0.5)
    assert loss.item() == 0.0 and diag["frac_active"].item() == 0.0


def test_triplet_without_positive_pairs_is_zero_with_grad():
    """All labels distinct: an exact 0 that backpropagates zeros (no NaN from a 0/0 mean)."""
    emb = torch.randn(5, 3, requires_grad=True)
    loss, diag = semi_hard_triplet_loss(emb, torch.arange(5))
    assert loss.item() == 0.0 and diag["num_positive_pairs"].item() == 0
    loss.backward()
    assert torch.equal(emb.grad, torch.zeros_like(emb))


def test_triplet_anchor_without_negatives_is_dropped():
    """All labels equal: no triplet exists, so the loss and its gradient are exact zeros (the
    +inf placeholders of missing negatives must not leak into either)."""
    emb = torch.randn(4, 3, requires_grad=True)
    loss, diag = semi_hard_triplet_loss(emb, torch.zeros(4, dtype=torch.long))
    assert loss.item() == 0.0 and diag["num_positive_pairs"].item() == 0
    loss.backward()
    assert torch.equal(emb.grad, torch.zeros_like(emb))


def test_triplet_agrees_with_pytorch_metric_learning_when_mining_coincides():
    """An independent implementation agrees where the two definitions coincide.

    pytorch-metric-learning mines *all* semi-hard triplets and averages over them; vivi takes
    *one* negative per positive pair (the closest farther one, else the farthest) and averages
    over pairs. They agree when every positive pair has exactly one negative and it is semi-hard
    (d_ap < d_an < d_ap + margin), as here: 2 pairs, loss 0.5 + 1 - 1.25."""
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.losses import TripletMarginLoss
    from pytorch_metric_learning.miners import TripletMarginMiner
    from pytorch_metric_learning.reducers import MeanReducer

    emb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, 1.0]])
    labels = torch.tensor([0, 0, 1])
    dist = LpDistance(power=2, normalize_embeddings=False)
    miner = TripletMarginMiner(margin=0.5, type_of_triplets="semihard", distance=dist)
    pml_loss = TripletMarginLoss(margin=0.5, distance=dist, reducer=MeanReducer())(
        emb, labels, miner(emb, labels)
    )
    ours, _ = semi_hard_triplet_loss(emb, labels, 0.5)
    assert ours.item() == pytest.approx(0.25)
    torch.testing.assert_close(ours, pml_loss)


def test_triplet_at_batch_1024_is_quadratic_in_memory_and_exact():
    """A B x B x B formulation would need 4 GiB at B = 1024 and fail or crawl; the O(B^2) one
    must run at once and still give the definition's value (checked class by class)."""
    g = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(1024, 32, generator=g, dtype=torch.float64), dim=1)
    labels = torch.arange(1024) // 8
    loss, _ = semi_hard_triplet_loss(emb, labels)
    torch.testing.assert_close(loss, triplet_by_class(emb, labels, 0.5))


# --------------------------------------------------------------------------------------
# Exemplar
# --------------------------------------------------------------------------------------


def test_triplet_groups_are_mined_separately_and_averaged_over_groups():
    """With ``group_size`` each group of consecutive rows is its own triplet loss (negatives from
    other groups would change the mined negative) and the loss is the mean of the group losses,
    a group without a positive pair counting 0; the mean over all pairs would differ here, as
    the groups hold different numbers of pairs."""
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(24, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(3, (24,), generator=g)
    labels[16:] = torch.arange(8)  # the last group has no positive pair
    e1, e2 = emb.clone().requires_grad_(True), emb.clone().requires_grad_(True)
    loss, diag = semi_hard_triplet_loss(e1, labels, 0.5, group_size=8)
    stats = [{} for _ in range(3)]
    groups = [triplet_loop(e2[8 * i : 8 * i + 8], labels[8 * i : 8 * i + 8], 0.5, stats[i]) for i in range(3)]
    ref = torch.stack(groups).mean()
    torch.testing.assert_close(loss, ref)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(e1.grad, e2.grad)
    pairs = [st["pairs"] for st in stats]
    assert pairs[2] == 0 and pairs[0] != pairs[1]
    assert diag["num_positive_pairs"].item() == sum(pairs)
    per_pair_mean = sum(grp.item() * n for grp, n in zip(groups, pairs)) / sum(pairs)
    assert abs(loss.item() - per_pair_mean) > 1e-3
    torch.testing.assert_close(semi_hard_triplet_loss(emb, labels, 0.5, group_size=24)[0],
                               semi_hard_triplet_loss(emb, labels, 0.5)[0])
    with pytest.raises(ValueError, match="group_size=7 does not divide the batch of 24 rows"):
        semi_hard_triplet_loss(emb, labels, 0.5, group_size=7)


@pytest.mark.parametrize("group_shots", [2, 4])
def test_exemplar_group_shots_mines_within_consecutive_shots(group_shots):
    """``group_shots=G`` on (N, K, F, D) mines within G consecutive shots in (video, shot) order,
    also when a group spans videos (G = 4 > K = 2); a group of frames instead of shots, or a
    shot order other than the flattening order, changes the value against the loop."""
    g = torch.Generator().manual_seed(group_shots)
    emb = torch.randn(4, 2, 3, 6, generator=g, dtype=torch.float64)
    loss, _ = ExemplarLoss(group_shots=group_shots)(emb)
    flat = emb.reshape(-1, 6)
    flat = flat / flat.norm(dim=1, keepdim=True)
    labels = shot_labels(4, 2, 3)
    rows = group_shots * 3
    ref = torch.stack([triplet_loop(flat[r : r + rows], labels[r : r + rows], 0.5) for r in range(0, 24, rows)]).mean()
    torch.testing.assert_close(loss, ref)
    assert abs(loss.item() - ExemplarLoss()(emb)[0].item()) > 1e-3


def test_exemplar_group_shots_refuses_a_partial_group():
    """A rank whose shots are not a whole number of groups is refused with the numbers, so
    groups never straddle ranks; flat (B, D) input cannot be grouped by shot."""
    emb = torch.randn(4, 2, 3, 6)
    with pytest.raises(ValueError, match=r"group_shots=3 does not divide this rank's 8 shots \(4 videos x 2 shots\)"):
        ExemplarLoss(group_shots=3)(emb)
    with pytest.raises(ValueError, match=r"needs embeddings laid out as \(N, K, F, D\)"):
        ExemplarLoss(group_shots=2)(emb.reshape(24, 6), shot_labels(4, 2, 3))
    with pytest.raises(ValueError, match="positive number of shots"):
        ExemplarLoss(group_shots=0)


def test_shot_labels_layout():
    """Frame (i, l, k) of the (video, shot, frame) layout gets label i * K + l."""
    labels = shot_labels(2, 3, 2)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


def test_exemplar_is_triplet_on_l2_normalised_with_shot_labels():
    """Missing normalisation (the scaled copy differs), wrong labels or a wrong flattening order
    of (N, K, F, D) change the value against the loop."""
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(3, 2, 4, 10, generator=g, dtype=torch.float64)
    loss, _ = ExemplarLoss()(emb)
    flat = emb.reshape(-1, 10)
    ref = triplet_loop(flat / flat.norm(dim=1, keepdim=True), shot_labels(3, 2, 4), 0.5)
    torch.testing.assert_close(loss, ref)
    loss_scaled, _ = ExemplarLoss()(7.0 * flat, shot_labels(3, 2, 4))
    torch.testing.assert_close(loss_scaled, loss)
    with pytest.raises(ValueError, match="labels"):
        ExemplarLoss()(flat)


def test_exemplar_closed_forms():
    """Orthonormal shots with identical frames give 0; identical frames everywhere give the margin."""
    emb = torch.eye(6)[shot_labels(3, 2, 4)]  # d_ap = 0, d_an = 2 > margin
    assert ExemplarLoss()(emb, shot_labels(3, 2, 4))[0].item() == 0.0
    same = torch.ones(24, 10)
    assert ExemplarLoss()(same, shot_labels(3, 2, 4))[0].item() == pytest.approx(0.5)


# --------------------------------------------------------------------------------------
# Rotation
# --------------------------------------------------------------------------------------


def test_rotate_batch_by_construction():
    """Copies in the order 0, 90, 180, 270 degrees counter-clockwise, labels matching; a
    clockwise rotation or a wrong order fails the pixel-by-pixel comparison."""
    img = torch.arange(2 * 3 * 3, dtype=torch.float32).reshape(1, 2, 3, 3)  # asymmetric
    img = torch.cat([img, -img])  # B = 2
    out, labels = rotate_batch(img)
    assert out.shape == (8, 2, 3, 3)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]

    def rot_ccw(x):  # one counter-clockwise quarter turn as displayed (row 0 on top)
        h, w = x.shape[-2:]
        y = torch.empty(x.shape[:-2] + (w, h))
        for r in range(w):
            for c in range(h):
                y[..., r, c] = x[..., c, w - 1 - r]
        return y

    expected = img
    for k in range(4):
        torch.testing.assert_close(out[2 * k : 2 * k + 2], expected)
        expected = rot_ccw(expected)
    # the top-right pixel of the original moves to the top-left after 90 degrees
    assert out[2, 0, 0, 0] == img[0, 0, 0, 2]


def test_rotate_batch_rejects_non_square():
    """A non-square crop would leak the rotation through the aspect ratio after resizing."""
    with pytest.raises(ValueError, match="square"):
        rotate_batch(torch.zeros(1, 3, 4, 5))


def test_rotation_loss_matches_loop():
    """Softmax cross-entropy, mean over the 4B images, and its accuracy, against a loop."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 4, generator=g, dtype=torch.float64)
    labels = torch.arange(4).repeat_interleave(3)
    loss, diag = RotationLoss()(logits, labels)
    ref = sum(-math.log(math.exp(logits[i, labels[i]]) / sum(math.exp(v) for v in logits[i])) for i in range(12)) / 12
    assert loss.item() == pytest.approx(ref, rel=1e-12)
    assert diag["accuracy"].item() == pytest.approx(
        sum(int(logits[i].argmax() == labels[i]) for i in range(12)) / 12
    )
    with pytest.raises(ValueError, match=r"\(4B, 4\)"):
        RotationLoss()(logits[:, :3], labels)


# --------------------------------------------------------------------------------------
# Video level: InfoNCE
# --------------------------------------------------------------------------------------


def test_prediction_pairs():
    """Every (l, l + m) pair with l + m < K, ordered by l then m: 1 pair for K = 2, 6 for K = 4."""
    assert [tuple(t.tolist()) for t in prediction_pairs(2)] == [(0,), (1,)]
    ctx, tgt = prediction_pairs(4)
    assert list(zip(ctx.tolist(), tgt.tolist())) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]


@pytest.mark.parametrize(
    "make_predictor, k",
    [
        (lambda: MLPCritic(12, hidden=8, out_dim=6), 2),
        (lambda: BilinearCritic(12), 2),
        (lambda: LSTMPredictor(12, hidden=8, max_offset=3), 4),
        (lambda: LSTMPredictor(12, hidden=8, max_offset=3, shared_head=True), 4),
    ],
)
def test_infonce_matches_loop_value_gradient_and_accuracy(make_predictor, k):
    """A wrong candidate set (own video's shots as negatives, only the same time step), a
    wrong label column or a wrong reduction changes value, gradient or candidate count."""
    torch.manual_seed(0)
    predictor = make_predictor().double()
    shots = torch.randn(5, k, 12, dtype=torch.float64)
    s1 = shots.clone().requires_grad_(True)
    s2 = shots.clone().requires_grad_(True)
    p1, p2 = predictor(s1), predictor(s2)
    assert p1.queries.shape[:2] == (5, k * (k - 1) // 2)
    loss, diag = VideoInfoNCELoss()(p1.queries, p1.keys, p1.target_shot)
    ref, accuracy = infonce_loop(p2.queries, p2.keys, p2.target_shot)
    torch.testing.assert_close(loss, ref)
    assert diag["num_candidates"].item() == 1 + 4 * k
    assert diag["accuracy"].item() == pytest.approx(accuracy)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(s1.grad, s2.grad)


def test_infonce_closed_form_uniform_scores():
    """Identical keys: every candidate scores the same, so the loss is log(number of candidates)."""
    n, k, p = 6, 4, 6
    keys = torch.ones(n, k, 3)
    queries = torch.randn(n, p, 3)
    _, tgt = prediction_pairs(k)
    loss, diag = VideoInfoNCELoss()(queries, keys, tgt)
    assert loss.item() == pytest.approx(math.log(1 + (n - 1) * k), rel=1e-5)
    assert diag["num_candidates"].item() == 1 + (n - 1) * k


def test_infonce_own_video_other_shots_are_not_negatives():
    """The other shots of the prediction's own video are masked out of the candidates."""
    # Video 0: shot 0 scores 10, its target shot 1 scores 5; every shot of videos 1, 2 is 0.
    # Candidates of video 0 = its target + the 4 shots of the other videos (footnote 2), so
    # its loss is -log(e^5 / (e^5 + 4)); had its own shot 0 been a negative it would be ~5.
    keys = torch.zeros(3, 2, 3)
    keys[0, 0, 0], keys[0, 1, 0] = 10.0, 5.0
    queries = torch.zeros(3, 1, 3)
    queries[0, 0, 0] = 1.0  # videos 1, 2: zero queries, all 5 candidates tie -> log 5
    loss, _ = VideoInfoNCELoss()(queries, keys, torch.tensor([1]))
    loss0 = -math.log(math.exp(5) / (math.exp(5) + 4))
    assert loss.item() == pytest.approx((loss0 + 2 * math.log(5)) / 3, rel=1e-6)
    torch.testing.assert_close(loss, infonce_loop(queries, keys, torch.tensor([1]))[0])


def test_info_nce_logits_of_a_rank_are_rows_of_the_global_ones():
    """With ``video_offset`` a rank's local queries against the gathered keys give exactly the
    rows of the one-process logits of its videos: a wrong offset masks and labels another
    video's shots (caught here without starting processes)."""
    torch.manual_seed(0)
    queries, keys = torch.randn(6, 3, 5, dtype=torch.float64), torch.randn(6, 3, 5, dtype=torch.float64)
    _, tgt = prediction_pairs(3)
    full_logits, full_labels = info_nce_logits(queries, keys, tgt)
    for rank in range(3):  # three ranks of two videos each
        rows = slice(rank * 2 * 3, (rank + 1) * 2 * 3)  # (video, pair) rows of this rank
        logits, labels = info_nce_logits(queries[2 * rank : 2 * rank + 2], keys, tgt, video_offset=2 * rank)
        torch.testing.assert_close(logits, full_logits[rows])  # -inf (masked) where the full rows have it
        assert torch.equal(labels, full_labels[rows])


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(
    "make_predictor, k, group_videos",
    [
        (lambda: MLPCritic(12, hidden=8, out_dim=6), 2, None),
        (lambda: MLPCritic(12, hidden=8, out_dim=6), 2, 3),
        (lambda: LSTMPredictor(12, hidden=8, max_offset=3), 4, None),
        (lambda: LSTMPredictor(12, hidden=8, max_offset=3), 4, 2),
    ],
)
def test_infonce_scope_and_reduction_match_loop(make_predictor, k, group_videos, reduction):
    """``scope="group"`` takes negatives only from the prediction's group of consecutive videos
    (a group cut at the wrong videos, or negatives from other groups, change value or gradient);
    ``pair_reduction="sum"`` is Object-centric eq. (1), the sum over a video's pairs averaged
    over videos (for K = 4 six times the mean), ``"mean"`` the mean over all predictions."""
    torch.manual_seed(2)
    predictor = make_predictor().double()
    shots = torch.randn(6, k, 12, dtype=torch.float64)
    s1, s2 = shots.clone().requires_grad_(True), shots.clone().requires_grad_(True)
    p1, p2 = predictor(s1), predictor(s2)
    scope = "global" if group_videos is None else "group"
    loss, diag = VideoInfoNCELoss(scope=scope, group_videos=group_videos, pair_reduction=reduction)(
        p1.queries, p1.keys, p1.target_shot)
    ref, accuracy = infonce_loop(p2.queries, p2.keys, p2.target_shot, group_videos, reduction)
    torch.testing.assert_close(loss, ref)
    assert diag["num_candidates"].item() == 1 + ((group_videos or 6) - 1) * k
    assert diag["accuracy"].item() == pytest.approx(accuracy)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(s1.grad, s2.grad)
    if reduction == "sum":
        mean, _ = VideoInfoNCELoss(scope=scope, group_videos=group_videos)(p1.queries, p1.keys, p1.target_shot)
        torch.testing.assert_close(loss, k * (k - 1) // 2 * mean)


def test_group_info_nce_logits_are_blocks_of_the_global_ones():
    """Each group's logits are the global logits restricted to the group's columns: a wrong
    label offset or mask inside a group shows up here."""
    torch.manual_seed(0)
    queries, keys = torch.randn(6, 3, 5, dtype=torch.float64), torch.randn(6, 3, 5, dtype=torch.float64)
    _, tgt = prediction_pairs(3)
    full_logits, full_labels = info_nce_logits(queries, keys, tgt)
    logits, labels = group_info_nce_logits(queries, keys, tgt, group_videos=2)
    for group in range(3):
        rows, cols = slice(group * 2 * 3, (group + 1) * 2 * 3), slice(group * 2 * 3, (group + 1) * 2 * 3)
        torch.testing.assert_close(logits[rows], full_logits[rows, cols])
        assert torch.equal(labels[rows] + group * 2 * 3, full_labels[rows])


def test_infonce_arguments_are_checked():
    """Unknown scope or reduction, a group size without ``scope="group"`` (or the reverse), a
    group without negatives and a rank that is not a whole number of groups are refused."""
    q, keys = torch.randn(6, 1, 5), torch.randn(6, 2, 5)
    for kwargs, message in [
        (dict(scope="rank"), "scope must be one of"),
        (dict(pair_reduction="max"), "pair_reduction must be one of"),
        (dict(group_videos=4), "goes with scope='group' only"),
        (dict(scope="group"), "goes with scope='group' only"),
        (dict(scope="group", group_videos=1), "at least 2"),
    ]:
        with pytest.raises(ValueError, match=message):
            VideoInfoNCELoss(**kwargs)
    with pytest.raises(ValueError, match="group_videos=4 does not divide this rank's 6 videos"):
        VideoInfoNCELoss(scope="group", group_videos=4)(q, keys, torch.tensor([1]))


def test_critic_scores_are_the_papers_forms():
    """MLP critic: score = phi(u) . psi(v) (VIVI app. A); bilinear critic: score = u^T W v
    (Object-centric §4.1), with u the context shot and v the candidate. A swapped phi/psi or a
    transposed W changes the scores."""
    torch.manual_seed(0)
    shots = torch.randn(3, 2, 6, dtype=torch.float64)
    u, v = shots[:, 0], shots[:, 1]
    mlp = MLPCritic(6, hidden=5, out_dim=4).double()
    pred = mlp(shots)
    torch.testing.assert_close((pred.queries[:, 0] * pred.keys[:, 1]).sum(-1), (mlp.phi(u) * mlp.psi(v)).sum(-1))
    bilinear = BilinearCritic(6).double()
    pred = bilinear(shots)
    w = bilinear.weight.weight.T  # the score is u^T W v with W = (the linear map's matrix)^T
    torch.testing.assert_close((pred.queries[:, 0] * pred.keys[:, 1]).sum(-1), torch.einsum("ni,ij,nj->n", u, w, v))
    assert pred.keys is shots


@pytest.mark.parametrize("shared_head", [False, True])
def test_lstm_predictor_reads_shots_up_to_the_context_and_has_a_head_per_offset(shared_head):
    """The prediction for pair (l, l + m) is head_m(LSTM state after shots 0..l), with one head
    per offset m (or one for all with ``shared_head``): a query that saw a later shot, or used
    the wrong offset's head, differs from this loop."""
    torch.manual_seed(0)
    predictor = LSTMPredictor(8, hidden=6, max_offset=3, shared_head=shared_head).double()
    shots = torch.randn(3, 4, 8, dtype=torch.float64)
    pred = predictor(shots)
    assert len(predictor.heads) == (1 if shared_head else 3)
    for pair, (c, t) in enumerate(zip(pred.context_shot.tolist(), pred.target_shot.tolist())):
        state = predictor.lstm(shots[:, : c + 1])[0][:, -1]  # the LSTM run on the prefix alone
        head = predictor.heads[0 if shared_head else t - c - 1]
        torch.testing.assert_close(pred.queries[:, pair], head(state))
    with pytest.raises(ValueError, match="max_offset"):
        LSTMPredictor(8, max_offset=1)(shots)


# --------------------------------------------------------------------------------------
# Video level: shot order
# --------------------------------------------------------------------------------------


def test_reverse_shots_randomly():
    """Reversed videos are exactly the flipped ones and labelled 1; p = 0 and p = 1 give all
    forward and all reversed; the same generator gives the same labels."""
    shots = torch.randn(64, 2, 5)
    out, labels = reverse_shots_randomly(shots, generator=torch.Generator().manual_seed(0))
    assert set(labels.tolist()) == {0, 1}
    for i in range(64):
        expected = shots[i].flip(0) if labels[i] == 1 else shots[i]
        assert torch.equal(out[i], expected)
    _, labels2 = reverse_shots_randomly(shots, generator=torch.Generator().manual_seed(0))
    assert torch.equal(labels, labels2)
    forward, none = reverse_shots_randomly(shots, p=0.0)
    assert torch.equal(forward, shots) and none.sum() == 0
    backward, every = reverse_shots_randomly(shots, p=1.0)
    assert torch.equal(backward, shots.flip(1)) and every.sum() == 64


def test_shot_order_loss_matches_loop():
    """Two-way cross-entropy, mean over videos, on the concatenation [shot 0, shot 1]."""
    torch.manual_seed(0)
    head = ShotOrderHead(dim=5, num_shots=2, hidden=7)
    shots, labels = reverse_shots_randomly(torch.randn(10, 2, 5))
    logits = head(shots)
    assert logits.shape == (10, 2)
    loss, diag = ShotOrderLoss()(logits, labels)
    ref = torch.stack([-torch.log_softmax(logits[i], 0)[labels[i]] for i in range(10)]).mean()
    torch.testing.assert_close(loss, ref)
    assert diag["accuracy"].item() == pytest.approx(sum(int(logits[i].argmax() == labels[i]) for i in range(10)) / 10)
    x = torch.randn(1, 2, 5)
    torch.testing.assert_close(head(x), head.mlp(torch.cat([x[0, 0], x[0, 1]])[None]))
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        ShotOrderLoss()(logits.repeat(1, 2), labels)


# --------------------------------------------------------------------------------------
# Object level
# --------------------------------------------------------------------------------------


def coordinate_grid(b, gh, gw):
    """(B, 3, H', W') grid whose columns hold (frame, row, col)."""
    grid = torch.zeros(b, 3, gh, gw)
    grid[:, 0] = torch.arange(b, dtype=torch.float32)[:, None, None]
    grid[:, 1] = torch.arange(gh, dtype=torch.float32)[None, :, None]
    grid[:, 2] = torch.arange(gw, dtype=torch.float32)[None, None, :]
    return grid


def cell_loop(box_px, h, w, gh, gw):
    """Object-centric §3 with exact fractions: box (x0, y0, x1, y1), centre pixel (i, j) with
    i the row (from y) and j the column (from x), cell floor(i H'/H), floor(j W'/W)."""
    i = min(max(math.floor(Fraction(box_px[1] + box_px[3]) / 2), 0), h - 1)
    j = min(max(math.floor(Fraction(box_px[0] + box_px[2]) / 2), 0), w - 1)
    return math.floor(Fraction(i * gh, h)), math.floor(Fraction(j * gw, w))


def test_box_features_by_construction_pixel_and_normalised():
    """Each box reads the grid column the paper's formula names, in pixels and normalised; a
    float rounding of H'/H, swapped rows and columns or a missing clamp pick another cell."""
    h, w, gh, gw = 224, 200, 7, 9  # non-integer ratio for the width on purpose
    boxes_px = torch.tensor(  # (x0, y0, x1, y1) in pixels of the H x W input
        [
            [[0, 0, 200, 224], [20, 90, 46, 110], [199, 223, 200, 224], [0, 0, 22, 31]],
            [[0, 32, 10, 64], [150, 10, 199, 50], [0, 0, 0, 0], [100, 100, 100, 100]],
        ],
        dtype=torch.float32,
    )
    grid = coordinate_grid(2, gh, gw)
    feats = extract_box_features(grid, boxes_px, (h, w), normalized=False)
    assert feats.shape == (2, 4, 3)
    for b in range(2):
        for m in range(4):
            row, col = cell_loop([int(v) for v in boxes_px[b, m]], h, w, gh, gw)
            assert feats[b, m].tolist() == [b, row, col]
    # known values: whole image -> centre pixel (i, j) = (112, 100) -> (3, 4); box x 20..46,
    # y 90..110 -> centre (i, j) = (100, 33) -> (100*7//224, 33*9//200) = (3, 1); corner box ->
    # last cell
    assert feats[0, 0, 1:].tolist() == [3, 4]
    assert feats[0, 1, 1:].tolist() == [3, 1]
    assert feats[0, 2, 1:].tolist() == [gh - 1, gw - 1]
    scale = torch.tensor([w, h, w, h], dtype=torch.float32)
    feats_n = extract_box_features(grid, boxes_px / scale, (h, w), normalized=True)
    torch.testing.assert_close(feats_n, feats)
    rows, cols = box_grid_cells(boxes_px, (h, w), (gh, gw), normalized=False)
    assert rows.tolist() == feats[..., 1].long().tolist() and cols.tolist() == feats[..., 2].long().tolist()


def test_box_convention_is_x0_y0_x1_y1():
    """A (ymin, xmin, ymax, xmax) reading of the boxes would put this box at the opposite corner."""
    # A box in the top-right corner of a wide 32 x 64 input (H x W): x near 1, y near 0 ->
    # grid row 0 (top), last column.
    grid = coordinate_grid(1, 4, 8)
    top_right = torch.tensor([[[0.80, 0.05, 0.95, 0.20]]])  # x0, y0, x1, y1 normalised
    assert extract_box_features(grid, top_right, (32, 64))[0, 0].tolist() == [0, 0, 7]
    rows, cols = box_grid_cells(top_right * torch.tensor([64, 32, 64, 32]), (32, 64), (4, 8), normalized=False)
    assert (rows.item(), cols.item()) == (0, 7)


def test_box_features_padding_and_gradient():
    """NaN in padded boxes never reaches the features, and the gradient flows to exactly the
    read cell (one per valid box)."""
    grid = torch.randn(2, 4, 3, 3, requires_grad=True)
    boxes = torch.tensor([[[0.1, 0.1, 0.3, 0.3], [float("nan")] * 4]] * 2)
    valid = torch.tensor([[True, False], [True, False]])
    feats = extract_box_features(grid, boxes, (32, 32), valid=valid)
    assert torch.isfinite(feats).all()
    torch.testing.assert_close(feats[:, 0], grid[:, :, 0, 0])  # centre 0.2 * 32 = 6.4 -> cell 0
    feats[:, 0].sum().backward()
    assert grid.grad[:, :, 0, 0].eq(1).all() and grid.grad.sum() == 2 * 4


def test_object_triplet_uses_valid_boxes_and_normalises():
    """Padded boxes left in, a missing L2 normalisation or a wrong label pairing changes the
    value against the loop; with no valid box the loss is an exact 0 with zero gradient."""
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(4, 5, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(3, (4, 5), generator=g)
    valid = torch.rand(4, 5, generator=g) > 0.3
    loss, _ = ObjectTripletLoss()(feats, labels, valid)
    kept = feats[valid]
    ref = triplet_loop(kept / kept.norm(dim=1, keepdim=True), labels[valid], 0.5)
    torch.testing.assert_close(loss, ref)
    raw, _ = ObjectTripletLoss(normalize=False)(feats, labels, valid)
    torch.testing.assert_close(raw, triplet_loop(kept, labels[valid], 0.5))
    feats2 = feats.clone()
    feats2[~valid] = 1e6
    torch.testing.assert_close(ObjectTripletLoss()(feats2, labels, valid)[0], loss)
    leaf = feats.clone().requires_grad_(True)
    empty, _ = ObjectTripletLoss()(leaf, labels, torch.zeros_like(valid))
    assert empty.item() == 0.0
    empty.backward()
    assert torch.equal(leaf.grad, torch.zeros_like(leaf))


def test_object_classification_loss_matches_loop():
    """Sigmoid BCE summed over classes and averaged over valid boxes (a mean over classes, or
    padded boxes counted, changes the value); accuracy over valid boxes only."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 7, generator=g, dtype=torch.float64)
    labels = torch.randint(7, (2, 3), generator=g)
    valid = torch.tensor([[True, True, False], [True, False, True]])
    loss, diag = ObjectClassificationLoss()(logits, labels, valid)
    total, count, correct = 0.0, 0, 0
    for b in range(2):
        for m in range(3):
            if not valid[b, m]:
                continue
            for c in range(7):
                z, y = logits[b, m, c].item(), float(c == labels[b, m])
                sig = 1 / (1 + math.exp(-z))
                total += -(y * math.log(sig) + (1 - y) * math.log(1 - sig))
            count += 1
            correct += int(logits[b, m].argmax() == labels[b, m])
    assert loss.item() == pytest.approx(total / count, rel=1e-12)
    assert diag["accuracy"].item() == pytest.approx(correct / count)


def test_object_loss_terms():
    """Each ``terms`` choice is the sum of exactly its terms, the BCE weighted; an unknown term
    and a missing classifier are refused."""
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(3, 5, 8, generator=g)
    labels = torch.randint(4, (3, 5), generator=g)
    valid = torch.ones(3, 5, dtype=torch.bool)
    head = ObjectClassHead(8, num_classes=4)
    logits = head(feats)
    trip, _ = ObjectTripletLoss()(feats, labels, valid)
    cls, _ = ObjectClassificationLoss()(logits, labels, valid)
    assert ObjectLoss()(feats, labels, valid)[0].item() == pytest.approx(trip.item())
    both, diag = ObjectLoss(("triplet", "classification"), classification_weight=2.0)(feats, labels, valid, logits)
    assert both.item() == pytest.approx(trip.item() + 2 * cls.item())
    assert {"triplet", "classification", "triplet/frac_semi_hard", "classification/accuracy"} <= diag.keys()
    only, _ = ObjectLoss(("classification",))(feats, labels, valid, logits)
    assert only.item() == pytest.approx(cls.item())
    with pytest.raises(ValueError, match="valid"):
        ObjectLoss(("boxes",))
    with pytest.raises(ValueError, match="class_logits"):
        ObjectLoss(("classification",))(feats, labels, valid)


def test_ablate_objects():
    """Random boxes keep each box's size and move its centre to a uniform draw over the image
    (x over the width, y over the height); random labels are uniform over the classes; the
    detector mode is the identity. The draws are compared with the same generator's values."""
    boxes = torch.tensor([[[0.1, 0.2, 0.3, 0.6]] * 50])
    half = torch.tensor([0.1, 0.2])
    labels = torch.full((1, 50), 7)
    same_b, same_l = ablate_objects(boxes, labels, "detector")
    assert same_b is boxes and same_l is labels

    rb, rl = ablate_objects(boxes, labels, "random_boxes", generator=torch.Generator().manual_seed(0))
    centre = torch.rand(1, 50, 2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(rb, torch.cat([centre - half, centre + half], dim=-1))
    assert torch.equal(rl, labels)

    g = torch.Generator().manual_seed(1)
    rb2, rl2 = ablate_objects(boxes, labels, "random_boxes_and_labels", num_classes=600, generator=g)
    g_ref = torch.Generator().manual_seed(1)
    centre = torch.rand(1, 50, 2, generator=g_ref)
    torch.testing.assert_close(rb2, torch.cat([centre - half, centre + half], dim=-1))
    assert torch.equal(rl2, torch.randint(600, (1, 50), generator=g_ref))

    # pixels of an H x W = 100 x 50 input: x scaled by W = 50, y by H = 100
    px, _ = ablate_objects(boxes * 40, labels, "random_boxes", normalized=False, image_size=(100, 50),
                           generator=torch.Generator().manual_seed(2))
    centre = torch.rand(1, 50, 2, generator=torch.Generator().manual_seed(2)) * torch.tensor([50.0, 100.0])
    torch.testing.assert_close(px, torch.cat([centre - 40 * half, centre + 40 * half], dim=-1))
    with pytest.raises(ValueError, match="image_size"):
        ablate_objects(boxes, labels, "random_boxes", normalized=False)
    with pytest.raises(ValueError, match="detector"):
        ablate_objects(boxes, labels, "shuffle")


# --------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------


def test_head_defaults_are_the_papers_sizes():
    """Default sizes of VIVI app. A and Object-centric §4.1 / §5.1: exemplar 1000, rotation 4,
    box classes 600, shot 512 from the frame mean, MLP critic 256 -> 128, LSTM 2 x 256 -> 512,
    shot order MLP 512 -> 2. A wrong default or pooling after the projection fails here."""
    x = torch.randn(3, 2048)
    assert ExemplarHead()(x).shape == (3, 1000)
    assert RotationHead()(x).shape == (3, 4)
    assert ObjectClassHead()(x).shape == (3, 600)
    frames = torch.randn(2, 4, 8, 2048)
    proj = ShotProjection()
    shots = proj(frames)
    assert shots.shape == (2, 4, 512)
    torch.testing.assert_close(shots, proj.proj(frames.mean(dim=2)))  # average, then project
    crit = MLPCritic()
    pred = crit(shots[:, :2])
    assert pred.queries.shape == (2, 1, 128) and pred.keys.shape == (2, 2, 128)
    assert [m.out_features for m in crit.phi if isinstance(m, torch.nn.Linear)] == [256, 128]
    lstm = LSTMPredictor()
    assert (lstm.lstm.hidden_size, lstm.lstm.num_layers) == (256, 2)
    pred = lstm(shots)
    assert pred.queries.shape == (2, 6, 512) and pred.keys is shots
    assert [m.out_features for m in ShotOrderHead().mlp if isinstance(m, torch.nn.Linear)] == [512, 2]
