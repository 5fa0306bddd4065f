CREATE TABLE public.case10_readings (meter_id int, kwh numeric);
CREATE TABLE public.case10_codes (code text);
