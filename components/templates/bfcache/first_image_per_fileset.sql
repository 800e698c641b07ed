-- First image of every fileset, the largest filesets first.
-- Same IDs as the operators' page (rank() = 1 per fileset over fileset JOIN
-- image), but one pass over image with a hash aggregate instead of a sort of
-- every image by fileset: image.fileset references fileset.id, so the join
-- adds nothing but work. Filesets without images yield no row; images
-- without a fileset are skipped. Columns: image ID, images in its fileset
-- (the job's cost estimate). Run as the unrestricted role: `psql -At -f`.
SELECT min(i.id) AS image, count(*) AS images
FROM image AS i
WHERE i.fileset IS NOT NULL
GROUP BY i.fileset
ORDER BY images DESC, image;
