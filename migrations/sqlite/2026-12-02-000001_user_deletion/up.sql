-- An account an operator deleted stays as a tombstone: its name and key stay taken (so no one
-- signs up into the conversations it had), its password hash is wiped, and every lookup that
-- stands for "this user exists" skips it. Its sessions, devices, contacts, invites and queued
-- frames are deleted with it; the messages it exchanged stay in its peers' logs.
-- Keep in step with the other dialect (same version name) and src/store/schema.rs.
ALTER TABLE users ADD COLUMN deleted_at BIGINT;
