CREATE TABLE public.case01_patterns (pattern text);
