-- Accounts foundation (seed 002): users, devices, sessions, invites, contacts and the
-- pending-delivery queue. Times are BIGINT milliseconds since the Unix epoch; ids are TEXT.
-- Keep in step with migrations/postgres (same version name) and src/store/schema.rs.

CREATE TABLE users (
    id            TEXT   PRIMARY KEY NOT NULL,
    username      TEXT   NOT NULL UNIQUE,
    password_hash TEXT   NOT NULL,
    created_at    BIGINT NOT NULL
);

CREATE TABLE devices (
    user_id      TEXT   NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    device_id    TEXT   NOT NULL,
    created_at   BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- Only a SHA-256 digest of each token is kept, so a leaked database cannot be replayed.
CREATE TABLE sessions (
    token_hash BLOB   PRIMARY KEY NOT NULL,
    user_id    TEXT   NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    device_id  TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX sessions_user_id ON sessions (user_id);
CREATE INDEX sessions_expires_at ON sessions (expires_at);

CREATE TABLE invites (
    from_user    TEXT   NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    to_user      TEXT   NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    status       TEXT   NOT NULL CHECK (status IN ('pending', 'accepted', 'rejected')),
    created_at   BIGINT NOT NULL,
    delivered_at BIGINT,
    responded_at BIGINT,
    PRIMARY KEY (from_user, to_user),
    CHECK (from_user <> to_user)
);
CREATE INDEX invites_to_user_status ON invites (to_user, status);

-- Symmetric: an accepted invite writes both (a, b) and (b, a).
CREATE TABLE contacts (
    user_id    TEXT   NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    contact_id TEXT   NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, contact_id)
);

-- Frames for users who were offline; taken (deleted) when they subscribe.
CREATE TABLE pending_messages (
    id         INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    user_id    TEXT    NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    frame      TEXT    NOT NULL,
    created_at BIGINT  NOT NULL
);
CREATE INDEX pending_messages_user_id ON pending_messages (user_id, id);
