ALTER TABLE conversations DROP CONSTRAINT conversations_key_order;
ALTER TABLE conversations ADD CONSTRAINT conversations_check CHECK (user_a < user_b);
