"""The first-image-per-fileset query on a real PostgreSQL, against the page's
window-function query, on an OMERO-shaped schema.

The test starts its own cluster (initdb + pg_ctl as the postgres OS user,
Unix socket only) and runs the rendered .sql with `psql -At` as is.
"""
from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

import pytest

from components.render import bfcache as render
from tests.support.page import PAGE_QUERY
from tests.support.postgres import Cluster, as_postgres, pg_cluster
from tests.support.settings import bfcache_settings

pytestmark = pytest.mark.integration

PORT = 5441

SCHEMA = """
CREATE TABLE fileset (id bigint PRIMARY KEY, templateprefix text NOT NULL DEFAULT 'prefix/');
CREATE TABLE image (id bigint PRIMARY KEY, name text NOT NULL DEFAULT 'img',
                    acquisitiondate timestamp, fileset bigint REFERENCES fileset (id));
CREATE TABLE filesetentry (id bigint PRIMARY KEY, fileset bigint NOT NULL REFERENCES fileset (id),
                           clientpath text NOT NULL DEFAULT 'file.tif');
"""


@pytest.fixture(scope="module")
def cluster():
    with pg_cluster(PORT, "idr-bfcache-pg-") as c:
        with c.connect() as db:
            db.execute("CREATE DATABASE idr")
        yield c


def load(cluster: Cluster, seed: int, index: bool):
    """Filesets of skewed sizes, some without images; images without a
    fileset; image IDs interleaved across filesets, not in fileset order."""
    rng = random.Random(seed)
    filesets = list(range(1, 400))
    sizes = {f: rng.choice([0, 0, 1, 1, 1, 2, 3, 5, 8, 40]) for f in filesets}
    sizes[7] = 300  # a plate
    images = [(f) for f, n in sizes.items() for _ in range(n)] + [None] * 50
    rng.shuffle(images)
    ids = rng.sample(range(1, 10 * len(images)), len(images))
    with cluster.connect("idr") as db:
        db.execute("DROP TABLE IF EXISTS filesetentry, image, fileset")
        db.execute(SCHEMA)
        if index:
            db.execute("CREATE INDEX i_image_fileset ON image (fileset)")
        with db.cursor() as cur:
            cur.executemany("INSERT INTO fileset (id) VALUES (%s)", [(f,) for f in filesets])
            cur.executemany("INSERT INTO image (id, fileset) VALUES (%s, %s)", list(zip(ids, images)))
            cur.executemany("INSERT INTO filesetentry (id, fileset) VALUES (%s, %s)",
                            [(i, f) for i, f in enumerate((f for f in filesets for _ in range(2)), 1)])
        db.execute("ANALYZE")
    expected = defaultdict(list)
    for image, fileset in zip(ids, images):
        if fileset is not None:
            expected[fileset].append(image)
    return expected, sizes


def page_ids(cluster: Cluster) -> list[int]:
    with cluster.connect("idr") as db:
        return [r[0] for r in db.execute(PAGE_QUERY).fetchall()]


def run_rendered_sql(cluster: Cluster, tmp_path: Path) -> list[str]:
    """The file as it lands on the database host, run as the hosts do."""
    (sql,) = [f for f in render.database_files(
        bfcache_settings()) if f.path.endswith(".sql")]
    path = cluster.socket_dir / "first_image_per_fileset.sql"  # readable by postgres
    path.write_text(sql.content)
    path.chmod(0o644)
    out = as_postgres("psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", str(cluster.socket_dir), "-p", str(PORT),
                      "-d", "idr", "-f", str(path))
    return out.stdout.splitlines()


@pytest.mark.parametrize("seed, index", [(1, False), (2, True), (3, True)])
def test_same_ids_as_the_page_with_cost_largest_first(cluster, tmp_path, seed, index):
    expected, sizes = load(cluster, seed, index)
    lines = run_rendered_sql(cluster, tmp_path)
    rows = [tuple(int(v) for v in line.split("|")) for line in lines]
    assert all(len(r) == 2 for r in rows)
    ours = [image for image, _ in rows]
    page = page_ids(cluster)
    # The same IDs as the page, each once: one per fileset that has images.
    assert sorted(ours) == sorted(page)
    assert len(ours) == len(set(ours)) == len(expected) == sum(1 for n in sizes.values() if n)
    assert set(ours) == {min(v) for v in expected.values()}
    # The cost is the fileset's image count, and the list is largest first.
    for image, cost in rows:
        (fileset,) = [f for f, v in expected.items() if min(v) == image]
        assert cost == sizes[fileset]
    costs = [c for _, c in rows]
    assert costs == sorted(costs, reverse=True)
    assert rows[0] == (min(expected[7]), 300)


def test_empty_database_gives_an_empty_list(cluster, tmp_path):
    with cluster.connect("idr") as db:
        db.execute("DROP TABLE IF EXISTS filesetentry, image, fileset")
        db.execute(SCHEMA)
        db.execute("INSERT INTO fileset (id) VALUES (1)")
        db.execute("INSERT INTO image (id, fileset) VALUES (5, NULL)")
    assert run_rendered_sql(cluster, tmp_path) == []
    assert page_ids(cluster) == []
