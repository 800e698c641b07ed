"""First-image-per-fileset at IDR scale: the page's window-function query vs
ours (components/templates/bfcache/first_image_per_fileset.sql), on a real
PostgreSQL 15 started here, with and without an index on image.fileset.
Run by hand (as root; PostgreSQL runs as the postgres OS user):

    .venv/bin/python benchmarks/bfcache_query.py [--images 2000000] [--filesets 200000]

Data: filesets with images skewed as in IDR (a few plates of thousands of
images, most filesets small), 1% of filesets without images, 1% of images
without a fileset, image IDs in import order. Each query fetches every row;
the best of three runs counts.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from components.render import bfcache as render  # noqa: E402
from tests.support.page import PAGE_QUERY as PAGE  # noqa: E402
from tests.support.postgres import pg_cluster  # noqa: E402

PORT = 5442


def load(db, images: int, filesets: int) -> None:
    db.execute("""
        CREATE TABLE fileset (id bigint PRIMARY KEY, templateprefix text NOT NULL DEFAULT 'demo_2/2016-01/01/',
                              owner_id bigint NOT NULL DEFAULT 2, group_id bigint NOT NULL DEFAULT 3);
        CREATE TABLE image (id bigint PRIMARY KEY, name text NOT NULL, acquisitiondate timestamp,
                            archived boolean, description text, owner_id bigint NOT NULL DEFAULT 2,
                            group_id bigint NOT NULL DEFAULT 3, series int NOT NULL DEFAULT 0,
                            fileset bigint REFERENCES fileset (id));
        CREATE TABLE filesetentry (id bigint PRIMARY KEY, fileset bigint NOT NULL REFERENCES fileset (id),
                                   clientpath text NOT NULL);
    """)
    db.execute("INSERT INTO fileset (id) SELECT g FROM generate_series(1, %s) g", (filesets,))
    # Sizes: 30 plates of 2000-5000 images; the rest share what is left with
    # a long tail; 1% of filesets get no image.
    db.execute("""
        CREATE TEMP TABLE sizes AS
        SELECT f AS fileset,
               CASE WHEN f %% 6661 = 0 THEN 2000 + (f * 7919) %% 3000
                    WHEN f %% 100 = 17 THEN 0
                    ELSE 1 + floor(-ln(1 - ((f * 2654435761) %% 1000003) / 1000003.0) * %s)::int END AS n
        FROM generate_series(1, %s) f
    """, (max(1, images // filesets - 1), filesets))
    db.execute("""
        INSERT INTO image (id, name, fileset)
        SELECT row_number() OVER (ORDER BY s.fileset, g), 'image.tif [' || g || ']', s.fileset
        FROM sizes s, generate_series(1, s.n) g
    """)
    db.execute("""
        INSERT INTO image (id, name, fileset)
        SELECT (SELECT max(id) FROM image) + g, 'orphan', NULL FROM generate_series(1, (SELECT count(*) / 100 FROM image)) g
    """)
    db.execute("""
        INSERT INTO filesetentry (id, fileset, clientpath)
        SELECT row_number() OVER (), fileset, 'file' || g FROM sizes, generate_series(1, least(n, 3)) g
    """)
    db.execute("VACUUM ANALYZE")


def best(db, sql: str) -> tuple[float, list]:
    times, rows = [], []
    for _ in range(3):
        t0 = time.monotonic()
        rows = db.execute(sql).fetchall()
        times.append(time.monotonic() - t0)
    return min(times), rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2_000_000)
    ap.add_argument("--filesets", type=int, default=200_000)
    args = ap.parse_args()
    ours_sql = render.first_image_sql()
    with pg_cluster(PORT, "bfcache-pg-") as cluster:
        with cluster.connect() as db:
            t0 = time.monotonic()
            load(db, args.images, args.filesets)
            n_images, n_sets, big = db.execute(
                "SELECT (SELECT count(*) FROM image), (SELECT count(*) FROM fileset), "
                "(SELECT max(c) FROM (SELECT count(*) c FROM image WHERE fileset IS NOT NULL GROUP BY fileset) x)").fetchone()
            print(f"data: {n_images} images, {n_sets} filesets, largest fileset {big} images "
                  f"(loaded in {time.monotonic() - t0:.0f} s)")
            for index in (False, True):
                if index:
                    db.execute("CREATE INDEX i_image_fileset ON image (fileset)")
                    db.execute("ANALYZE image")
                page_t, page_rows = best(db, PAGE)
                ours_t, ours_rows = best(db, ours_sql)
                assert sorted(r[0] for r in page_rows) == sorted(r[0] for r in ours_rows), "different IDs"
                label = "with index on image.fileset   " if index else "without index on image.fileset"
                print(f"{label}: page {page_t:6.2f} s, ours {ours_t:6.2f} s, "
                      f"{page_t / ours_t:4.1f}x faster ({len(ours_rows)} IDs, same set)")


if __name__ == "__main__":
    main()
