-- The seed-001 key directory and sealed delivery. A key user is a Courier user whose username
-- (eid) is the URL-safe, unpadded base64 of its 33-byte userID; device_id is the protocol's
-- deviceID. Nothing about the sender of a sealed message is stored.
-- Keep in step with migrations/sqlite (same version name) and src/store/schema.rs.

-- One registration per (user, device): its registrationID and signedPreKey.
CREATE TABLE key_registrations (
    username        TEXT   NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    device_id       BIGINT NOT NULL,
    registration_id BIGINT NOT NULL,
    signed_pre_key  BYTEA  NOT NULL,
    registered_at   BIGINT NOT NULL,
    PRIMARY KEY (username, device_id)
);

-- One-time prekeys, handed out oldest first and deleted as they are handed out.
CREATE TABLE one_time_prekeys (
    id        BIGSERIAL PRIMARY KEY,
    username  TEXT    NOT NULL,
    device_id BIGINT  NOT NULL,
    pre_key   BYTEA   NOT NULL,
    FOREIGN KEY (username, device_id) REFERENCES key_registrations (username, device_id) ON DELETE CASCADE
);
CREATE INDEX one_time_prekeys_device ON one_time_prekeys (username, device_id, id);

-- A sealed message takes the receiver's next signal_offset in the same log as every other
-- message (user_logs); device_id is the device it is addressed to.
CREATE TABLE sealed_messages (
    receiver        TEXT   NOT NULL REFERENCES users(username) ON DELETE CASCADE,
    receiver_offset BIGINT NOT NULL,
    device_id       BIGINT NOT NULL,
    body            BYTEA  NOT NULL,
    stored_at       BIGINT NOT NULL,
    PRIMARY KEY (receiver, receiver_offset)
);
CREATE INDEX sealed_messages_device ON sealed_messages (receiver, device_id, receiver_offset);
