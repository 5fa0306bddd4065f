CREATE TABLE public.case02_customers (customer_id int, first_name text, last_name text, email text);
