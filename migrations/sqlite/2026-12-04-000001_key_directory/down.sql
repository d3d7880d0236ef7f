DROP TABLE sealed_messages;
DROP TABLE one_time_prekeys;
DROP TABLE key_registrations;
