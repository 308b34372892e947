from herdbook.feedback.scoring import Tally
from herdbook.feedback.selection import RatedImage, select_instance_images, selected

from herdbook.config import SelectionPolicy


def image(id, accepts=1, rejects=0, prompt="an ox", phash=None):
    # distinct default hashes: far apart unless a test says otherwise
    return RatedImage(
        id, prompt, Tally(accepts, rejects), phash or f"{id * 0x1F3D5B79A1C3E5F7 % (1 << 64):016x}", f"{id}.png"
    )


def chosen_ids(decisions):
    return [d.image.id for d in selected(decisions)]


def test_a_lone_curators_accepts_are_selected_and_rejects_are_not():
    decisions = select_instance_images([image(1), image(2, 0, 1), image(3)])
    assert sorted(chosen_ids(decisions)) == [1, 3]
    reasons = {d.image.id: d.reason for d in decisions}
    assert "rejected" in reasons[2]


def test_an_image_most_raters_rejected_is_never_selected_however_lax_the_policy():
    decisions = select_instance_images(
        [image(1, 2, 3), image(2, 1, 1)], SelectionPolicy(min_votes=0, min_score=0, top_k=99)
    )
    assert chosen_ids(decisions) == []
    assert "tied" in {d.image.id: d.reason for d in decisions}[2]


def test_better_supported_images_rank_first_and_top_k_cuts():
    images = [image(1, 1, 0), image(2, 5, 0), image(3, 4, 1), image(4, 9, 1)]
    decisions = select_instance_images(images, SelectionPolicy(top_k=2))
    assert chosen_ids(decisions) == [4, 2]
    assert "top 2" in {d.image.id: d.reason for d in decisions}[3]


def test_minimum_votes_and_score():
    decisions = select_instance_images([image(1, 1, 0), image(2, 3, 0)], SelectionPolicy(min_votes=2))
    assert chosen_ids(decisions) == [2]
    decisions = select_instance_images([image(1, 1, 0), image(2, 3, 0)], SelectionPolicy(min_score=0.4))
    assert chosen_ids(decisions) == [2]


def test_near_copies_are_never_both_chosen():
    original = "f0e1d2c3b4a59687"
    resized_copy = "f0e1d2c3b4a59686"  # one bit apart
    decisions = select_instance_images(
        [image(1, 3, 0, phash=original), image(2, 2, 0, phash=resized_copy), image(3, 1, 0)]
    )
    assert chosen_ids(decisions) == [1, 3]
    assert "near-copy of #1" in {d.image.id: d.reason for d in decisions}[2]


def test_cap_per_prompt():
    images = [image(i, 3, 0, prompt="a") for i in range(1, 5)] + [image(9, 1, 0, prompt="b")]
    decisions = select_instance_images(images, SelectionPolicy(max_per_prompt=2))
    assert chosen_ids(decisions) == [1, 2, 9]


def test_every_image_gets_a_reason():
    decisions = select_instance_images([image(i, i % 3, 1) for i in range(10)])
    assert len(decisions) == 10 and all(d.reason for d in decisions)
