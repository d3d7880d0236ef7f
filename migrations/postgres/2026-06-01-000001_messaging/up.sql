-- Messaging (seeds 003/004): one log per user, one offset sequence per conversation, the
-- messages themselves, and each device's cursor over its user's log.
-- Keep in step with migrations/sqlite (same version name) and src/store/schema.rs.

-- last_offset is the user's last signal_offset; received_offset / read_offset are how far any
-- of the user's devices has acknowledged the log.
CREATE TABLE user_logs (
    username        TEXT   PRIMARY KEY NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    last_offset     BIGINT NOT NULL,
    received_offset BIGINT NOT NULL DEFAULT 0,
    read_offset     BIGINT NOT NULL DEFAULT 0
);

-- One row per pair of users (user_a < user_b): the last user_offset handed out, and the
-- highest user_offset each side has acknowledged as received / read.
CREATE TABLE conversations (
    user_a           TEXT   NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    user_b           TEXT   NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    last_user_offset BIGINT NOT NULL,
    a_received       BIGINT NOT NULL DEFAULT 0,
    a_read           BIGINT NOT NULL DEFAULT 0,
    b_received       BIGINT NOT NULL DEFAULT 0,
    b_read           BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_a, user_b),
    CHECK (user_a < user_b)
);

-- A message is stored once and sits in two logs: the sender's (sender_offset, for the
-- sender's other devices) and the receiver's (receiver_offset). (sender, client_id) is the
-- idempotency key a retry is matched on.
CREATE TABLE messages (
    sender          TEXT   NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    client_id       TEXT   NOT NULL,
    sender_device   TEXT,
    receiver        TEXT   NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    user_offset     BIGINT NOT NULL,
    sender_offset   BIGINT NOT NULL,
    receiver_offset BIGINT NOT NULL,
    sent_at         BIGINT NOT NULL,
    stored_at       BIGINT NOT NULL,
    payload         BYTEA NOT NULL,
    encryption_type TEXT   NOT NULL,
    encrypted       TEXT   NOT NULL,
    signature       TEXT   NOT NULL,
    PRIMARY KEY (sender, client_id),
    CHECK (sender <> receiver)
);
CREATE UNIQUE INDEX messages_sender_log ON messages (sender, sender_offset);
CREATE UNIQUE INDEX messages_receiver_log ON messages (receiver, receiver_offset);
CREATE UNIQUE INDEX messages_conversation ON messages (sender, receiver, user_offset);

-- How far each device has acknowledged its user's log (its receiver queue).
CREATE TABLE device_cursors (
    username     TEXT   NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    device_id    TEXT   NOT NULL,
    acked_offset BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (username, device_id)
);
