CREATE TABLE public.members (member_id int, name text);
