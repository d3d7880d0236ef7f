-- PostgreSQL's version of this migration makes the conversation key's CHECK compare bytes.
-- SQLite's CHECK already does (the BINARY collation); this version keeps both dialects in step.
SELECT 1;
