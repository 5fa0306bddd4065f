CREATE TABLE public.exports (day date, amount int);
