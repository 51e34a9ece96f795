-- 0020_recipient_domain_tags: why a recipient accepted at RCPT was flagged ([recipients]
-- typo / no_mail_domain = "tag"), on its delivery: "likely_typo:gmail.com", "no_such_domain",
-- "no_mail_hosts", "null_mx". NULL (nearly every row) when nothing was flagged.
--
-- A nullable column without a default: added without rewriting the table, and written only
-- by the intake's insert (accept_messages).
ALTER TABLE deliveries ADD COLUMN recipient_domain_flag text;
