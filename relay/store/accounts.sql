-- Admin accounts and their sessions (accounts.py; 0013 holds the tables). A session is live
-- while expires_at is ahead and it was seen within the idle limit; $n named "idle" below is
-- that limit as an interval. Placeholders are asyncpg's $1..$n.

-- admin_account_add --
-- A new account ($1 name, $2 role, $3 hash) at $4 by $5; no row when the name is taken. The
-- shared password's sessions end: from now on only accounts log in.
WITH ins AS (
    INSERT INTO admin_accounts (name, role, password_hash, created_at, password_changed_at)
    VALUES ($1, $2, $3, $4, $4)
    ON CONFLICT (name) DO NOTHING
    RETURNING name, role
), shared AS (
    DELETE FROM admin_sessions
    WHERE account IS NULL AND EXISTS (SELECT 1 FROM ins)
    RETURNING expires_at, last_seen_at
), ended AS (
    SELECT count(*) AS n FROM shared WHERE expires_at > $4 AND last_seen_at > $4 - $6::interval
), a AS (
    INSERT INTO admin_audit (occurred_at, actor, action, subject, reason, detail)
    SELECT $4, $5, 'account.add', ins.name, 'role ' || ins.role,
           jsonb_build_object('role', ins.role, 'shared_sessions_ended', ended.n)
    FROM ins, ended
)
SELECT ins.name, ins.role, ended.n AS sessions_ended,
       (SELECT count(*) FROM admin_accounts) + 1 AS accounts_left
FROM ins, ended;

-- admin_account_remove --
-- Delete account $1 at $2 by $3 (its sessions go with it: ON DELETE CASCADE); no row when
-- there is no such account. $4: idle.
WITH live AS (
    SELECT count(*) AS n FROM admin_sessions
    WHERE account = $1 AND expires_at > $2 AND last_seen_at > $2 - $4::interval
), d AS (
    DELETE FROM admin_accounts WHERE name = $1 RETURNING name, role
), a AS (
    INSERT INTO admin_audit (occurred_at, actor, action, subject, reason, detail)
    SELECT $2, $3, 'account.remove', d.name, 'removed',
           jsonb_build_object('role', d.role, 'sessions_ended', live.n)
    FROM d, live
)
SELECT d.name, d.role, live.n AS sessions_ended,
       (SELECT count(*) FROM admin_accounts) - 1 AS accounts_left
FROM d, live;

-- admin_account_set_password --
-- Account $1 gets hash $2 at $3; its row stays locked until the transaction ends, so a login
-- checked against the old hash can neither start a session meanwhile nor slip one in before
-- admin_account_end_sessions runs. No row when there is no such account.
UPDATE admin_accounts SET password_hash = $2, password_changed_at = $3
WHERE name = $1
RETURNING name, role;

-- admin_account_end_sessions --
-- Every session of account $1, after its password changed at $2 by $3 (audited); how many
-- of them were live. $4: idle. A statement of its own, after the UPDATE above: it sees a
-- session a login committed while that UPDATE waited for the row.
WITH d AS (
    DELETE FROM admin_sessions WHERE account = $1 RETURNING expires_at, last_seen_at
), ended AS (
    SELECT count(*) AS n FROM d WHERE expires_at > $2 AND last_seen_at > $2 - $4::interval
), a AS (
    INSERT INTO admin_audit (occurred_at, actor, action, subject, reason, detail)
    SELECT $2, $3, 'account.passwd', $1, 'password changed',
           jsonb_build_object('sessions_ended', ended.n)
    FROM ended
)
SELECT ended.n AS sessions_ended, (SELECT count(*) FROM admin_accounts) AS accounts_left
FROM ended;

-- admin_accounts_list --
-- Every account by name, with its live sessions at $1. $2: idle.
SELECT a.name, a.role, a.created_at, a.password_changed_at, a.last_login_at,
       (SELECT count(*) FROM admin_sessions s
        WHERE s.account = a.name AND s.expires_at > $1
          AND s.last_seen_at > $1 - $2::interval) AS sessions
FROM admin_accounts a
ORDER BY a.name;

-- admin_account_hashes --
-- What a login is checked against: every account's name and password hash.
SELECT name, password_hash FROM admin_accounts ORDER BY name;

-- admin_sessions_clean --
-- Sessions no longer live at $1 ($2: idle), and the one a new login replaces ($3).
DELETE FROM admin_sessions
WHERE expires_at <= $1 OR last_seen_at <= $1 - $2::interval OR id_hash = $3;

-- admin_account_login --
-- Account $1 logged in at $3 with the password checked against hash $2: the row is locked
-- (a password change or a removal waits for this transaction, see above) and only if the
-- hash is still the account's. Its role; no row when the account is gone or its password
-- changed since the check.
UPDATE admin_accounts SET last_login_at = $3
WHERE name = $1 AND password_hash = $2
RETURNING role;

-- admin_session_insert --
-- A session: $1 key, $2 account (NULL: the shared password's), $3 digest of the shared
-- hash (NULL for an account), $4 CSRF token, $5 now, $6 expiry.
INSERT INTO admin_sessions (id_hash, account, shared_digest, csrf, created_at, last_seen_at,
                            expires_at)
VALUES ($1, $2, $3, $4, $5, $5, $6);

-- admin_session --
-- The live session with key $1 at $2 ($3: idle): its account (NULL: the shared password's)
-- and role and its CSRF token. A shared password's session holds only while its digest is
-- $4's (the configured hash now) and no account exists. Seen now: last_seen_at moves, at
-- most once a minute (a page view is not a write).
WITH found AS (
    SELECT s.id_hash, s.account, coalesce(a.role, 'admin') AS role, s.csrf, s.last_seen_at
    FROM admin_sessions s LEFT JOIN admin_accounts a ON a.name = s.account
    WHERE s.id_hash = $1 AND s.expires_at > $2 AND s.last_seen_at > $2 - $3::interval
      AND (s.account IS NOT NULL
           OR (s.shared_digest = $4 AND NOT EXISTS (SELECT 1 FROM admin_accounts)))
), touched AS (
    UPDATE admin_sessions SET last_seen_at = $2
    WHERE id_hash IN (SELECT id_hash FROM found WHERE last_seen_at < $2 - interval '1 minute')
)
SELECT account, role, csrf FROM found;

-- admin_session_end --
-- Log out: the session with key $1 is deleted.
DELETE FROM admin_sessions WHERE id_hash = $1;
