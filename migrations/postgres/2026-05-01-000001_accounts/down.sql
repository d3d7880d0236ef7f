DROP TABLE pending_messages;
DROP TABLE contacts;
DROP TABLE invites;
DROP TABLE sessions;
DROP TABLE devices;
DROP TABLE users;
