"""Reference text from the operators' page (reference/idr-administration.txt)
that tests and benchmarks compare the program's own files with."""

# The page's first-image-per-fileset query (a window function), which
# components/templates/bfcache/first_image_per_fileset.sql replaces.
PAGE_QUERY = """select r.i from (select f.id, i.id as i, rank()
              over (partition by f.id order by i.id) as x
              from fileset f, image i where f.id = i.fileset)
              as r where r.x = 1"""
