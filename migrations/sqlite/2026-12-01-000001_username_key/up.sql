-- The username comparison key (NFKC, lower case, NFKC: src/accounts/validate.rs): two names
-- with one key are one account. Nullable because only the server can compute it; it fills
-- existing rows at start-up, oldest account first, and a row whose key an older account has
-- already taken keeps NULL (it still signs in by its exact name).
-- (PostgreSQL already names the username's UNIQUE index users_username_key.)
-- Keep in step with the other dialect (same version name) and src/store/schema.rs.
ALTER TABLE users ADD COLUMN username_key TEXT;
CREATE UNIQUE INDEX users_by_username_key ON users (username_key);
