import pytest
from herdbook.db.models import Candidate, Vote
from herdbook.feedback.ingest import import_images, parse_rating, rows_from_csv, rows_from_folder
from sqlalchemy import func, select

from herdbook.errors import ImportProblem
from tests.conftest import make_image, write_csv


def run_import(home, store, folder, rows, rater=None, **kwargs):
    with store.transaction() as session:
        return import_images(session, folder, home.candidates_dir, home.root, rows, rater=rater, **kwargs)


def count(store, model):
    with store.transaction() as session:
        return session.scalar(select(func.count()).select_from(model))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("good", "accept"),
        ("BAD", "reject"),
        ("1", "accept"),
        ("0", "reject"),
        ("👍", "accept"),
        ("👎", "reject"),
        ("accept", "accept"),
        ("reject", "reject"),
        ("skip", "skip"),
        ("", None),
        ("  ", None),
    ],
)
def test_parse_rating_understands_the_usual_spellings(text, expected):
    assert parse_rating(text) == expected


def test_parse_rating_rejects_unknown_words():
    with pytest.raises(ImportProblem, match="maybe"):
        parse_rating("maybe")


def test_import_folder_records_prompts_and_metadata(home, store, image_folder):
    rows = rows_from_csv(image_folder / "prompts.csv")
    report = run_import(home, store, image_folder, rows)
    assert len(report.added) == 8 and report.ok
    with store.transaction() as session:
        first = session.scalars(select(Candidate).where(Candidate.source_name == "img-0.png")).one()
        assert first.prompt == "an ox"
        assert first.seed == 0
        assert (home.root / first.path).read_bytes() == (image_folder / "img-0.png").read_bytes()
        assert (first.width, first.height) == (64, 64)


def test_import_without_csv_takes_every_image_in_the_folder(home, store, image_folder):
    rows = rows_from_folder(image_folder)
    assert sorted(r.name for r in rows) == [f"img-{i}.png" for i in range(8)]


def test_bad_files_are_named_and_skipped_while_the_rest_import(home, store, tmp_path):
    folder = tmp_path / "mixed"
    make_image(folder / "good.png", seed=1)
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("I am not a picture")
    (folder / "vector.png").write_text('<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>')
    truncated = make_image(tmp_path / "whole.png", seed=2, size=(128, 128)).read_bytes()
    (folder / "truncated.png").write_bytes(truncated[: len(truncated) // 2])
    make_image(folder / "huge.png", seed=3, size=(300, 300))
    make_image(folder / "copy.png", seed=1)  # same bytes as good.png
    report = run_import(home, store, folder, rows_from_folder(folder), max_pixels=250 * 250)
    reasons = dict(report.problems)
    assert len(report.added) == 1
    assert "empty" in reasons["empty.png"]
    assert "not an image" in reasons["text.png"]
    assert "SVG" in reasons["vector.png"]
    assert "truncated" in reasons["truncated.png"]
    assert "90,000 pixels" in reasons["huge.png"]
    duplicate = "copy.png" if "copy.png" in reasons else "good.png"
    assert "same image as" in reasons[duplicate]
    assert not report.ok
    assert count(store, Candidate) == 1


def test_csv_paths_may_not_leave_the_folder(home, store, tmp_path):
    folder = tmp_path / "inside"
    make_image(folder / "a.png", seed=1)
    make_image(tmp_path / "secret.png", seed=2)
    table = write_csv(tmp_path / "t.csv", [{"file": "a.png", "prompt": "p"}, {"file": "../secret.png", "prompt": "p"}])
    report = run_import(home, store, folder, rows_from_csv(table))
    assert report.added == ["a.png"]
    assert report.problems == [("../secret.png", f"the path leaves {folder}")]


def test_missing_files_in_the_csv_are_reported(home, store, tmp_path):
    folder = tmp_path / "f"
    make_image(folder / "a.png", seed=1)
    table = write_csv(tmp_path / "t.csv", [{"path": "a.png", "prompt": "p"}, {"path": "gone.png", "prompt": "p"}])
    report = run_import(home, store, folder, rows_from_csv(table))
    assert report.problems == [("gone.png", "no such file")]


def test_csv_without_needed_columns_is_refused_up_front(tmp_path):
    table = write_csv(tmp_path / "t.csv", [{"name": "a.png", "caption": "p"}])
    with pytest.raises(ImportProblem, match=r"file \(or path\), prompt"):
        rows_from_csv(table)


def test_oxen_feedback_layout_imports_with_votes_and_a_second_rater_adds_theirs(home, store, tmp_path):
    folder = tmp_path / "oxen-example"
    for i in range(4):
        make_image(folder / "images" / f"{i}.png", seed=i)
    write_csv(
        folder / "train.csv",
        [{"prompt": "an ox", "path": f"images/{i}.png", "rating": "good" if i % 2 else "bad"} for i in range(4)],
    )
    report = run_import(home, store, folder, rows_from_csv(folder / "train.csv"), rater="ann")
    assert len(report.added) == 4 and report.votes == 4
    write_csv(folder / "bob.csv", [{"prompt": "an ox", "path": f"images/{i}.png", "rating": "👍"} for i in range(4)])
    again = run_import(home, store, folder, rows_from_csv(folder / "bob.csv"), rater="bob")
    assert again.added == [] and len(again.already_present) == 4 and again.votes == 4
    assert count(store, Candidate) == 4
    assert count(store, Vote) == 8


def test_ratings_need_a_rater(home, store, tmp_path):
    folder = tmp_path / "f"
    make_image(folder / "a.png")
    table = write_csv(tmp_path / "t.csv", [{"file": "a.png", "prompt": "p", "rating": "good"}])
    with pytest.raises(ImportProblem, match="--rater"):
        run_import(home, store, folder, rows_from_csv(table))


def test_a_failed_import_changes_nothing_in_the_home(home, store, image_folder, monkeypatch):
    run_import(home, store, image_folder, rows_from_csv(image_folder / "prompts.csv"))
    before = count(store, Candidate)
    stored = sorted(p.read_bytes() for p in home.candidates_dir.rglob("*.png"))

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("herdbook.feedback.ingest.cast_vote", explode)
    folder = image_folder.parent / "more"
    make_image(folder / "new.png", seed=99)
    table = write_csv(folder / "t.csv", [{"file": "new.png", "prompt": "p", "rating": "good"}])
    with pytest.raises(RuntimeError):
        run_import(home, store, folder, rows_from_csv(table), rater="ann")
    assert count(store, Candidate) == before
    for original in stored:
        assert any(p.read_bytes() == original for p in home.candidates_dir.rglob("*.png"))


def test_an_image_listed_again_with_a_rating_adds_a_vote(home, store, tmp_path):
    """Oxen's feedback app saves an image again under a new name each time it is voted on."""
    folder = tmp_path / "feedback"
    make_image(folder / "images" / "a.png", seed=1)
    (folder / "images" / "a-again.png").write_bytes((folder / "images" / "a.png").read_bytes())
    (folder / "images" / "a-third.png").write_bytes((folder / "images" / "a.png").read_bytes())
    make_image(folder / "images" / "b.png", seed=2)
    table = write_csv(
        folder / "train.csv",
        [
            {"path": "images/a.png", "prompt": "an ox", "rating": "good"},
            {"path": "images/a-again.png", "prompt": "an ox", "rating": "good"},
            {"path": "images/a-third.png", "prompt": "an ox", "rating": "bad"},
            {"path": "images/b.png", "prompt": "an ox", "rating": "bad"},
        ],
    )
    report = run_import(home, store, folder, rows_from_csv(table), rater="oxen-app")
    assert report.ok and len(report.added) == 2 and report.votes == 4
    with store.transaction() as session:
        from herdbook.feedback.catalog import tallies

        counts = sorted((t.accepts, t.rejects) for t in tallies(session).values())
    assert counts == [(0, 1), (2, 1)]


def test_a_big_import_commits_a_batch_at_a_time(home, store, tmp_path):
    folder = tmp_path / "many"
    for i in range(7):
        make_image(folder / f"{i}.png", seed=100 + i)
    commits = []
    with store.sessions() as session:
        report = import_images(
            session,
            folder,
            home.candidates_dir,
            home.root,
            rows_from_folder(folder),
            checkpoint=lambda: commits.append(1),
            batch=3,
        )
        session.commit()
    assert len(report.added) == 7 and len(commits) == 2  # after rows 3 and 6
