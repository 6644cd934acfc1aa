DROP INDEX broadcasts_open_by_category;
DROP INDEX broadcasts_by_category;
