DROP TABLE device_cursors;
DROP TABLE messages;
DROP TABLE conversations;
DROP TABLE user_logs;
