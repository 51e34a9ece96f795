-- 0013_admin_accounts: named accounts of the admin page, and its sessions, in the database.
--
-- An account has a role: 'admin' may change things (remove a suppression, release an
-- incident), 'viewer' may only read. `bounce-relay admin user add|remove|list|passwd`
-- manages them. Sessions are rows here, so a relay restart logs nobody out; a session dies
-- with its account (ON DELETE CASCADE), a password change deletes the account's sessions in
-- its own transaction, and a logout deletes its row.
--
-- A session with no account (account NULL) is the built-in "admin" of the shared
-- [admin] password_hash, which logs in only while no account exists. Such a session keeps
-- a digest of the hash it was verified against (shared_digest): it stops working when the
-- configured hash changes or the first account is created.

CREATE TABLE admin_accounts (
    name                text        PRIMARY KEY
                                    CHECK (name ~ '^[a-z0-9][a-z0-9._@-]{0,63}$'),
    role                text        NOT NULL CHECK (role IN ('admin', 'viewer')),
    password_hash       text        NOT NULL,   -- scrypt, relay/passwords.py's format
    created_at          timestamptz NOT NULL,
    password_changed_at timestamptz NOT NULL,
    last_login_at       timestamptz
);

CREATE TABLE admin_sessions (
    -- sha256 of the cookie's value: the table alone lets nobody log in.
    id_hash       bytea       PRIMARY KEY,
    account       text        REFERENCES admin_accounts (name) ON DELETE CASCADE,
    shared_digest bytea,
    csrf          text        NOT NULL,     -- the session's token for forms that change things
    created_at    timestamptz NOT NULL,
    last_seen_at  timestamptz NOT NULL,     -- touched at most once a minute
    expires_at    timestamptz NOT NULL,
    CHECK ((account IS NULL) = (shared_digest IS NOT NULL))
);

CREATE INDEX admin_sessions_account ON admin_sessions (account);
CREATE INDEX admin_sessions_expires_at ON admin_sessions (expires_at);
