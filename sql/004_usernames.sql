-- Usernames are unique by a key (the UTS #39 skeleton of the lowercased NFC name), so that
-- `Alice`/`alice` and look-alikes in other scripts are one name. Existing users get their key
-- from the code right after this runs (src/usernames.rs); NULL keys do not collide.
ALTER TABLE users ADD COLUMN name_key TEXT;
CREATE UNIQUE INDEX users_by_name_key ON users (name_key);
