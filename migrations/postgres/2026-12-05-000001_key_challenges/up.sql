-- Sign-in challenges for key users outside the signal endpoint (POST /api/keys/challenge):
-- each nonce is good for one signed login of the eid it was issued to, until it expires;
-- the login deletes it, and so does the purge once it has expired. No foreign key: the
-- account is made by the first successful login.
-- Keep in step with migrations/sqlite (same version name) and src/store/schema.rs.
CREATE TABLE key_challenges (
    nonce      BYTEA   NOT NULL PRIMARY KEY,
    username   TEXT   NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX key_challenges_expiry ON key_challenges (expires_at);
