"""A subset's ID list on a real PostgreSQL: the rendered ids.sh (the forced
command on the database host) runs the rendered subset SQL through psql,
as the coordinator asks for it, on an OMERO-shaped schema. Expected: the
first image of every fileset that holds an image of the subset, with the
fileset's whole image count, largest first - the rule of the whole list.
"""
from __future__ import annotations

import os
import random
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from components.render import bfcache as render
from tests.support.postgres import PG_BIN, pg_cluster
from tests.support.settings import bfcache_settings as settings

pytestmark = pytest.mark.integration

PORT = 5443

SCHEMA = """
CREATE TABLE fileset (id bigint PRIMARY KEY);
CREATE TABLE image (id bigint PRIMARY KEY, fileset bigint REFERENCES fileset (id));
CREATE TABLE dataset (id bigint PRIMARY KEY);
CREATE TABLE project (id bigint PRIMARY KEY);
CREATE TABLE datasetimagelink (id bigserial PRIMARY KEY, parent bigint NOT NULL REFERENCES dataset (id),
                               child bigint NOT NULL REFERENCES image (id));
CREATE TABLE projectdatasetlink (id bigserial PRIMARY KEY, parent bigint NOT NULL REFERENCES project (id),
                                 child bigint NOT NULL REFERENCES dataset (id));
CREATE TABLE screen (id bigint PRIMARY KEY);
CREATE TABLE plate (id bigint PRIMARY KEY);
CREATE TABLE screenplatelink (id bigserial PRIMARY KEY, parent bigint NOT NULL REFERENCES screen (id),
                              child bigint NOT NULL REFERENCES plate (id));
CREATE TABLE well (id bigserial PRIMARY KEY, plate bigint NOT NULL REFERENCES plate (id));
CREATE TABLE wellsample (id bigserial PRIMARY KEY, well bigint NOT NULL REFERENCES well (id),
                         image bigint NOT NULL REFERENCES image (id));
CREATE INDEX ON image (fileset);
"""


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """An IDR-shaped database: screens of plates (a fileset per plate), and
    projects of datasets whose images come from filesets that also hold
    images outside the dataset (a fileset split across datasets)."""
    rng = random.Random(7)
    with pg_cluster(PORT, "idr-bfcache-subset-pg-") as cluster:
        with cluster.connect() as c:
            c.execute("CREATE DATABASE idr")
        model = {"fileset": defaultdict(list), "dataset": defaultdict(set), "project": defaultdict(set),
                 "plate": defaultdict(set), "screen": defaultdict(set)}
        with cluster.connect("idr") as c:
            c.execute(SCHEMA)
            image = 100
            ids = iter(rng.sample(range(10_000, 99_999), 5000))   # image IDs not in fileset order
            for fileset in range(1, 61):
                c.execute("INSERT INTO fileset VALUES (%s)", (fileset,))
                for _ in range(rng.choice([1, 1, 2, 3, 8, 20]) if fileset > 6 else rng.randint(24, 96)):
                    image = next(ids)
                    c.execute("INSERT INTO image VALUES (%s, %s)", (image, fileset))
                    model["fileset"][fileset].append(image)
            c.execute("INSERT INTO image VALUES (5, NULL), (6, NULL)")   # images without a fileset
            # Screens 1-2 with plates 1-6 (plate p = fileset p, wells of one image each).
            for screen, plates in ((1, (1, 2, 3)), (2, (4, 5, 6))):
                c.execute("INSERT INTO screen VALUES (%s)", (screen,))
                for plate in plates:
                    c.execute("INSERT INTO plate VALUES (%s)", (plate,))
                    c.execute("INSERT INTO screenplatelink (parent, child) VALUES (%s, %s)", (screen, plate))
                    for img in model["fileset"][plate]:
                        well = c.execute("INSERT INTO well (plate) VALUES (%s) RETURNING id", (plate,)).fetchone()[0]
                        c.execute("INSERT INTO wellsample (well, image) VALUES (%s, %s)", (well, img))
                        model["plate"][plate].add(img)
                        model["screen"][screen].add(img)
            # Projects 1-3, datasets 1-9: each dataset takes some images of some filesets.
            for project in (1, 2, 3):
                c.execute("INSERT INTO project VALUES (%s)", (project,))
            for dataset in range(1, 10):
                c.execute("INSERT INTO dataset VALUES (%s)", (dataset,))
                c.execute("INSERT INTO projectdatasetlink (parent, child) VALUES (%s, %s)",
                          (1 + (dataset - 1) // 3, dataset))
                for fileset in rng.sample(range(7, 61), 6):
                    for img in model["fileset"][fileset][:max(1, len(model["fileset"][fileset]) // 2)]:
                        c.execute("INSERT INTO datasetimagelink (parent, child) VALUES (%s, %s)", (dataset, img))
                        model["dataset"][dataset].add(img)
                        model["project"][1 + (dataset - 1) // 3].add(img)
            c.execute("ANALYZE")

        # The files as they land on the database host; psql as postgres on this cluster.
        root = tmp_path_factory.mktemp("ids")
        root.chmod(0o755)
        files = {f.path: f.content for f in render.database_files(settings())}
        sql = cluster.socket_dir / "subset.sql"          # readable by postgres
        sql.write_text(files[render.SUBSET_SQL_PATH])
        whole = cluster.socket_dir / "whole.sql"
        whole.write_text(files[render.SQL_PATH])
        for p in (sql, whole):
            p.chmod(0o644)
        text = files[f"{render.LIBEXEC}/ids.sh"]
        text = text.replace("sudo -n -u postgres psql",
                            f"runuser -u postgres -- {PG_BIN}/psql -h {cluster.socket_dir} -p {PORT}")
        text = text.replace(render.SUBSET_SQL_PATH, str(sql)).replace(render.SQL_PATH, str(whole))
        ids_sh = root / "ids.sh"
        ids_sh.write_text(text)
        ids_sh.chmod(0o755)
        yield ids_sh, model


def ask(ids_sh: Path, command: str, stdin: str = "") -> subprocess.CompletedProcess:
    """As the coordinator does: `ssh database ids ...`, the command in SSH_ORIGINAL_COMMAND."""
    return subprocess.run([str(ids_sh)], input=stdin, capture_output=True, text=True,
                          env={**os.environ, "SSH_ORIGINAL_COMMAND": command})


def expected(model, images: set[int]) -> list[tuple[int, int]]:
    filesets = {f for f, imgs in model["fileset"].items() if images & set(imgs)}
    rows = [(min(model["fileset"][f]), len(model["fileset"][f])) for f in filesets]
    return sorted(rows, key=lambda r: (-r[1], r[0]))


def rows(out: subprocess.CompletedProcess) -> list[tuple[int, int]]:
    assert out.returncode == 0, out.stderr
    return [tuple(int(v) for v in line.split("|")) for line in out.stdout.splitlines()]


@pytest.mark.parametrize("kind, key", [("screen", 1), ("screen", 2), ("plate", 4), ("project", 2),
                                       ("dataset", 5), ("dataset", 9)])
def test_one_container_gives_the_first_image_of_each_of_its_filesets_largest_first(db, kind, key):
    ids_sh, model = db
    got = rows(ask(ids_sh, f"ids {kind} {key}"))
    assert got == expected(model, model[kind][key])
    assert got, "the subset is not empty"


def test_a_list_of_filesets_or_images(db):
    ids_sh, model = db
    filesets = [3, 17, 42, 9999]                       # 9999: no such fileset
    want = sorted(((min(model["fileset"][f]), len(model["fileset"][f])) for f in filesets[:-1]),
                  key=lambda r: (-r[1], r[0]))
    assert rows(ask(ids_sh, "ids filesets", "\n".join(map(str, filesets)) + "\n")) == want
    images = [model["fileset"][20][-1], model["fileset"][20][0], model["fileset"][31][-1], 5]   # 5: no fileset
    assert rows(ask(ids_sh, "ids images", "\n".join(map(str, images)) + "\n\n")) == expected(model, set(images))
    # A long list (more than one command-line argument may hold) goes through.
    every = [i for imgs in model["fileset"].values() for i in imgs] + list(range(200_000, 230_000))
    assert len(rows(ask(ids_sh, "ids images", "\n".join(map(str, every)) + "\n"))) == len(model["fileset"])


def test_the_whole_list_and_refusals(db):
    ids_sh, model = db
    assert rows(ask(ids_sh, "ids")) == expected(model, {i for imgs in model["fileset"].values() for i in imgs})
    assert ask(ids_sh, "check").stdout == "ready\n"
    for bad, stdin in (("ids screen 1;drop", ""), ("ids screen", ""), ("ids well 3", ""), ("rm -rf /", ""),
                       ("ids images", "3\nImage:4\n"), ("ids filesets", ""), ("ids screen 1 2", "")):
        out = ask(ids_sh, bad, stdin)
        assert out.returncode == 2 and out.stdout == "", bad
