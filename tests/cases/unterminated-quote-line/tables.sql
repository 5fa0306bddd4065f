CREATE TABLE public.case08_tickets (ticket_id int, note text);
