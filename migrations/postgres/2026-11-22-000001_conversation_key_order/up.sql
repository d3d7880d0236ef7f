-- A conversation's key orders its two usernames by bytes, as the server does (Rust's str order).
-- The first CHECK compared them in the database's collation: under en_US or ICU, ('Bob', 'alice')
-- is out of order, and every message between such a pair was refused.
ALTER TABLE conversations DROP CONSTRAINT conversations_check;
ALTER TABLE conversations ADD CONSTRAINT conversations_key_order CHECK (user_a < user_b COLLATE "C");
