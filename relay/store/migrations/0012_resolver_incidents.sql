-- 0012_resolver_incidents: our own resolver can have an incident (policies/incidents.py):
-- "no such domain" for many distinct recipient domains in a short window is the resolver's
-- fault, not the domains'. Such an incident has scope 'resolver', destination '' and
-- source_ip '' (a DNS answer has neither); recipients and attempted count domains.
ALTER TABLE incidents DROP CONSTRAINT incidents_scope_check;
ALTER TABLE incidents ADD CONSTRAINT incidents_scope_check
    CHECK (scope IN ('mx', 'domain', 'resolver'));
