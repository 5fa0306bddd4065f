CREATE TABLE public.docs (doc_id int, body text);
CREATE TABLE public.keyed_docs (doc_id int NOT NULL UNIQUE, body text);
