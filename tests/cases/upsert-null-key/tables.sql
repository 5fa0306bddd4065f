CREATE TABLE public.case12_contacts (email text UNIQUE, full_name text, phone text);
