"""The real images of the reference ox, from ../shared/oxen-demo (never copied into the repo)."""

import pytest
from herdbook.feedback.curation import decide
from herdbook.feedback.ingest import import_images, rows_from_csv, rows_from_folder
from herdbook.feedback.votes import cast_vote
from PIL import Image

from tests.conftest import SHARED_DEMO

pytestmark = pytest.mark.skipif(
    not (SHARED_DEMO / "candidates" / "prompts.csv").exists(),
    reason=f"the reference images are not at {SHARED_DEMO} (they live in the shared folder beside the checkout)",
)


def test_the_reference_candidates_import_with_their_prompts_and_model(home, store):
    folder = SHARED_DEMO / "candidates"
    with store.transaction() as session:
        report = import_images(session, folder, home.candidates_dir, home.root, rows_from_csv(folder / "prompts.csv"))
    assert report.ok and len(report.added) == 24
    from herdbook.feedback.catalog import list_candidates

    with store.transaction() as session:
        rows = list_candidates(session)
    assert {r.prompt for r in rows} >= {"an image of a happy white fluffy cartoon ox eating almonds"}


def test_a_resized_re_encoded_copy_of_a_training_image_is_never_selected_twice(home, store, tmp_path):
    folder = tmp_path / "instance"
    folder.mkdir()
    for path in sorted((SHARED_DEMO / "instance").glob("*.jpg")):
        (folder / path.name).write_bytes(path.read_bytes())
    with Image.open(folder / "ox-1.jpg") as original:
        original.resize((384, 384)).save(folder / "ox-1-copy.png")
    with store.transaction() as session:
        report = import_images(session, folder, home.candidates_dir, home.root, rows_from_folder(folder))
        assert len(report.added) == 7
        from herdbook.feedback.catalog import list_candidates

        for row in list_candidates(session):
            cast_vote(session, row.id, "ann", "accept")
        decisions, _ = decide(session, home.config.selection)
    chosen = {d.image.source_name for d in decisions if d.selected}
    assert len(chosen) == 6
    assert not {"ox-1.jpg", "ox-1-copy.png"} <= chosen
    assert any("near-copy" in d.reason for d in decisions if not d.selected)
