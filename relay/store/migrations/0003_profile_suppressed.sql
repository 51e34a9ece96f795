-- 0003_profile_suppressed: a profile suppressed by hand or by an import is 'suppressed'
-- (not 'hard_bounced': no bounce caused it).
ALTER TABLE profiles DROP CONSTRAINT profiles_status_check;
ALTER TABLE profiles ADD CONSTRAINT profiles_status_check
    CHECK (status IN ('active', 'hard_bounced', 'complained', 'suppressed'));
