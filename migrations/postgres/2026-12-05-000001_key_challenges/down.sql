DROP TABLE key_challenges;
